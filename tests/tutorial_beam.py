"""Beam search the way the popular captioning tutorials write it: one image at a time, a Python
loop over a list of hypotheses, on the model's own `init_state` / `step`, with the same search
rules as `captioner.beam.beam_search`. The tests check the batched search against it and
bench/speed/tutorial_reference.py times the two."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass
class Hypothesis:
    tokens: list[int]          # emitted tokens (<end> and the <pad>s after it included)
    score: float               # sum of log-probabilities
    alphas: list[torch.Tensor]
    betas: list[float]
    finished: bool
    row: int                   # this hypothesis's row in the decoder state of the live hypotheses


@torch.inference_mode()
def tutorial_beam_search(model, annotations: torch.Tensor, vocab, beam_size: int = 3,
                         max_len: int | None = None) -> list[dict]:
    """Per image, per step: the live hypotheses of that image only through `model.step`, then a
    Python loop over the K picks. Returns per image {"words", "log_prob", "alphas", "betas"}."""
    max_len = max_len or model.config.max_len
    K, V = beam_size, len(vocab)
    results = []
    for b in range(annotations.shape[0]):                       # one image at a time
        state = model.init_state(annotations[b:b + 1])          # 1 row: the empty hypothesis
        hyps = [Hypothesis([], 0.0, [], [], False, 0)]        # the live ones
        done: list[Hypothesis] = []                             # finished: out of the beam for good
        for _ in range(max_len):
            if not hyps or len(done) >= K:
                break
            tokens = torch.tensor([h.tokens[-1] if h.tokens else vocab.start for h in hyps])
            out, state = model.step(tokens, state)              # k_live rows
            log_probs = torch.log_softmax(out.logits.float(), dim=-1)
            log_probs[:, vocab.pad] = float("-inf")
            log_probs[:, vocab.start] = float("-inf")
            log_probs[:, vocab.unk] = float("-inf")                # as ours: <unk> is never written
            rows = torch.cat([h.score + log_probs[h.row] for h in hyps])   # the candidates of every live one
            top, flat = rows.topk(min(K - len(done), len(rows)))          # the beam narrows as ones finish
            new_hyps, keep = [], []
            for score, index in zip(top.tolist(), flat.tolist()):
                if score == float("-inf"):
                    continue
                parent, word = hyps[index // V], index % V
                done_now = word == vocab.end
                hyp = Hypothesis(parent.tokens + [word], score, parent.alphas + [out.alphas[parent.row].float()],
                                 parent.betas + [float(out.beta[parent.row])], done_now,
                                 -1 if done_now else len(keep))
                if done_now:
                    done.append(hyp)
                else:
                    new_hyps.append(hyp)
                    keep.append(parent.row)
            hyps = new_hyps
            if keep:                                            # the state rows of the new live hypotheses
                state = state.with_rows(torch.tensor(keep))
        hyps = done + hyps                                      # the live ones reached max_len
        best = max(hyps, key=lambda h: h.score)
        words = vocab.decode(best.tokens)
        results.append({"words": words, "log_prob": best.score,
                        "alphas": (torch.stack(best.alphas[:len(words)]) if words
                                   else torch.zeros(0, annotations.shape[1])),
                        "betas": torch.tensor(best.betas[:len(words)])})
    return results
