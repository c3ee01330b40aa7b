"""Work sized for the device changes how the beam search computes, never what it gives: the
additive scores in one chunk (a GPU with memory to spare) or in cache-sized chunks (the CPU), and
the chunk sizes each device gets. Behaviour only: nothing here is timed."""

from __future__ import annotations

import torch

from captioner.attention import CHUNK_BYTES, DEVICE_SHARE, Attention, chunk_images

GiB = 1 << 30


@torch.no_grad()
def test_one_chunk_equals_cache_sized_chunks():
    torch.manual_seed(0)
    B, R, L, A = 25, 3, 196, 512                          # 1.2 MB of temporary per image: several chunks
    attention = Attention("additive", encoder_dim=64, hidden_dim=32, attention_dim=A)
    keys = attention.keys(torch.randn(B, L, 64).relu_())  # (B, L, A)
    h = torch.randn(B * R, 32)
    query = attention.query_proj(h).view(B, R, 1, A)
    cpu_chunk = chunk_images("cpu", B, R * L * A * 4)
    assert 1 < cpu_chunk < B and B % cpu_chunk            # several chunks, the last one short
    chunked = attention._beam_additive_scores(keys, query)                   # the CPU's default
    whole = attention._beam_additive_scores(keys, query, images=B)           # what a roomy GPU runs
    single = attention._beam_additive_scores(keys, query, images=1)
    assert torch.allclose(whole, chunked, atol=1e-5, rtol=0)
    assert torch.allclose(single, chunked, atol=1e-5, rtol=0)
    with torch.enable_grad():                             # the plain tanh formula, which training runs
        plain = attention.scores(keys, h).view(B, R, L)
    assert torch.allclose(whole, plain, atol=1e-4, rtol=0)


def test_the_cpu_gets_cache_sized_chunks_whatever_memory_is_free():
    per_image = 3 * 196 * 512 * 4
    for free in (None, 1 << 20, 100 * GiB):
        assert chunk_images("cpu", 256, per_image, free) == CHUNK_BYTES // per_image == 3
    assert chunk_images("cpu", 2, per_image) == 2                  # never more than there are images
    assert chunk_images("cpu", 256, CHUNK_BYTES * 4) == 1          # one image bigger than the cache: one


def test_a_gpu_with_room_computes_the_scores_in_one_chunk_and_otherwise_in_the_fewest_equal_chunks():
    per_image = 3 * 196 * 512 * 4                                  # 256 images: 308 MB
    assert chunk_images("cuda", 256, per_image, 100 * GiB) == 256
    assert chunk_images("cuda", 256, per_image, None) == 256      # free memory unknown (another backend)
    free = 256 * per_image                                         # the whole temporary would fill it all
    images = chunk_images("cuda", 256, per_image, free)
    chunks = -(-256 // images)
    assert images * per_image <= DEVICE_SHARE * free              # each chunk within the share
    assert chunks == 4 and images == 64                            # the fewest chunks, equal
    assert chunk_images("cuda", 10, per_image, 1) == 1             # no room at all: one image at a time


def test_a_search_that_looks_for_live_beams_every_few_steps_gives_the_same_captions(make_model, monkeypatch):
    """On a GPU the search asks whether any beam is alive only every few steps (each look waits for
    the device); the steps it runs after every beam has finished change nothing."""
    import captioner.beam as beam
    from captioner.vocab import SPECIALS, Vocabulary

    assert beam.steps_between_checks("cpu") == 1 and beam.steps_between_checks("cuda") > 1
    vocab = Vocabulary(list(SPECIALS) + [f"w{i}" for i in range(40)])
    lengths = set()
    for seed, end_bias in ((2, 0.1), (3, 0.3), (4, 0.5), (0, 0.0)):
        model = make_model(seed, vocab=vocab, max_len=10)
        with torch.no_grad():
            model.decoder.L_o.bias[vocab.end] += end_bias
        annotations = torch.randn(6, model.config.grid_size ** 2, model.config.encoder_dim,
                                  generator=torch.Generator().manual_seed(seed)).relu_() * 3
        controls = dict(length_penalty=0.7, no_repeat_ngram_size=2, min_length=2)
        for k, kw in ((1, {}), (3, {}), (5, {}), (3, controls)):
            monkeypatch.setattr(beam, "steps_between_checks", lambda device_type: 1)
            every_step = beam.beam_search(model, annotations, vocab, beam_size=k, **kw)
            monkeypatch.setattr(beam, "steps_between_checks", lambda device_type: 4)
            every_fourth = beam.beam_search(model, annotations, vocab, beam_size=k, **kw)
            for a, b in zip(every_step, every_fourth):
                assert (a.words, a.log_prob, a.score, a.finished, a.candidates) == \
                       (b.words, b.log_prob, b.score, b.finished, b.candidates)
                assert torch.equal(a.alphas, b.alphas) and torch.equal(a.betas, b.betas)
                lengths.add((len(a.words), a.finished))
    assert len({n for n, _ in lengths}) > 3 and {f for _, f in lengths} == {True, False}  # varied stops
