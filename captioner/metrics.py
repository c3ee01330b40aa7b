"""Caption scores (BLEU, METEOR, ROUGE-L, CIDEr) by the official coco-caption toolkit, pycocoevalcap.

BLEU-1..4, ROUGE-L and CIDEr-D come from the toolkit's own scorers (pure Python, no Java). What
the toolkit lacks is here: `ptb_tokenize`, a pure-Python imitation of its Stanford PTB tokeniser
for machines without Java; guards around its Java programs (the tokeniser, run with the same
flags but from a private folder, and METEOR), so that a missing or failing Java becomes a
one-line `JavaError` or a warning; and `coco_scores`, which puts them together the way
`pycocoevalcap.eval.COCOEvalCap` does (less SPICE), with every image's scores as well.
pycocoevalcap is imported only inside functions, so `import captioner` never loads it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field


def toolkit_scores(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]],
                   metrics: Sequence[str] = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr")
                   ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """BLEU-1..4, ROUGE-L and CIDEr-D of tokenised captions by the toolkit's own scorers (pure
    Python: `pycocoevalcap`'s Bleu, Rouge and Cider): (overall, per image, in order).

    BLEU is corpus-level ("closest" reference length), its per-image values the toolkit's
    per-image ones; ROUGE-L is the mean of the images'; CIDEr-D's document frequencies come from
    the set scored. Captions are joined with spaces, as the toolkit's tokeniser leaves them."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("an image has no references")
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    overall: dict[str, float] = {}
    per_image: list[dict[str, float]] = [{} for _ in hypotheses]
    if any(m.startswith("Bleu") for m in metrics):
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        for k in range(4):
            overall[f"Bleu_{k + 1}"] = float(bleu[k])
            for row, value in zip(per_image, bleu_each[k]):
                row[f"Bleu_{k + 1}"] = float(value)
    for name, module, cls in (("ROUGE_L", "pycocoevalcap.rouge.rouge", "Rouge"),
                              ("CIDEr", "pycocoevalcap.cider.cider", "Cider")):
        if name in metrics:
            import importlib

            score, each = getattr(importlib.import_module(module), cls)().compute_score(gts, res)
            overall[name] = float(score)
            for row, value in zip(per_image, each):
                row[name] = float(value)
    return overall, per_image


# ----------------------------------------------------------------------------------------------
# Tokenisation for scoring: the toolkit's PTB tokeniser (Java) or a pure-Python imitation

# Tokens the toolkit deletes after tokenising (ptbtokenizer.py). Its tokeniser runs with
# -lowerCase, so brackets come out as "-lrb-" etc. and are *not* deleted by this upper-case list:
# a quirk of the official numbers, kept on both paths.
PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                             "-", "--", "...", ";"])
# Characters the Java tokeniser treats as line ends even with -preserveLines: left in a caption
# they would shift every later caption onto the wrong image, so they become spaces first.
_LINE_BREAKS = re.compile("[\r\n\u2028\u2029\u000b\u000c]")


class JavaError(RuntimeError):
    """A Java part of the toolkit (PTB tokeniser, METEOR) could not run; str() is one line."""


def java_available() -> bool:
    """Whether a `java` executable is on PATH (looked up at every call, so tests can hide it)."""
    return shutil.which("java") is not None


def _toolkit_dir(part: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise JavaError("pycocoevalcap is not installed (pip install pycocoevalcap)")
    return os.path.join(list(spec.submodule_search_locations)[0], part)


def ptb_tokenize_java(captions: Sequence[str]) -> list[list[str]]:
    """The toolkit's tokenisation: Stanford CoreNLP 3.4.1's PTBTokenizer (the jar shipped inside
    pycocoevalcap) with -preserveLines -lowerCase, then its punctuation list removed.

    Runs the same jar with the same flags as `pycocoevalcap`'s PTBTokenizer class, but writes its
    input to a private temporary folder rather than into the installed package (which may be
    read-only), tokenises all captions in one Java start, and checks that every caption came back
    as one line, so a stray line break can never move captions onto another image.
    """
    if not captions:
        return []
    jar = os.path.join(_toolkit_dir("tokenizer"), "stanford-corenlp-3.4.1.jar")
    if not os.path.isfile(jar):
        raise JavaError(f"{jar}: the toolkit's PTB tokeniser jar is missing")
    lines = [_LINE_BREAKS.sub(" ", c) for c in captions]
    with tempfile.TemporaryDirectory(prefix="captioner-ptb-") as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(lines))
        try:
            done = subprocess.run(["java", "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines",
                                   "-lowerCase", path], capture_output=True, check=False)
        except OSError as e:
            raise JavaError(f"cannot run java for the PTB tokeniser ({e.strerror or e})") from None
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise JavaError(f"the PTB tokeniser failed (java exit status {done.returncode}"
                        f"{': ' + detail[-1][:200] if detail else ''})")
    out = done.stdout.decode("utf-8", "replace").split("\n")   # the tokeniser writes UTF-8 whatever the locale
    # The file has no final newline; the tokeniser ends its output with one.
    if len(out) == len(lines) + 1 and out[-1] == "":
        out.pop()
    if len(out) != len(lines):
        raise JavaError(f"the PTB tokeniser returned {len(out)} lines for {len(lines)} captions")
    return [[w for w in line.split() if w not in PTB_PUNCTUATION] for line in out]


# --- pure-Python imitation of the same tokeniser (used only where Java is missing) -------------

# Abbreviations the Java tokeniser keeps together with their period (measured against its
# output): these in any case; US states only capitalised or in capitals ("Ky.", "KY."). A single
# letter followed by a period is kept too ("N. Astor"), unless a capitalised word that usually
# opens a sentence follows ("I. The man": the period ends a sentence).
_ABBREVIATIONS = frozenset("""
    mr mrs ms dr jr sr st ave blvd rd mt ft inc co corp ltd bros vs etc gov sen rep prof gen sgt lt col capt
    dept univ jan feb mar apr jun jul aug sep sept oct nov dec
""".split())
_STATES = frozenset("""
    Ala Ariz Ark Calif Colo Conn Del Fla Ga Ill Ind Kan Kans Ky Md Mass Mich Minn Miss Mont Neb Nev Okla Ore
    Penn Tenn Tex Vt Wash Wis Wyo
""".split())
# Whole words the Java tokeniser splits in two, and where.
_SPLIT_WORDS = {"cannot": 3, "gonna": 3, "gotta": 3, "wanna": 3, "lemme": 3, "gimme": 3}
_CONTRACTION = re.compile(r"^(.+?)(n't|N'T|'[sS]|'re|'RE|'ve|'VE|'ll|'LL|'[dD]|'[mM])$")
_KEPT_APOSTROPHE = re.compile(r"^[A-Za-z]'\w+$|^[Mm]a'am$")   # o'neil, d'angelo, ma'am
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_NORMALISE = [
    (re.compile(r"&amp;", re.I), "&"), (re.compile(r"&lt;", re.I), "<"), (re.compile(r"&gt;", re.I), ">"),
    (re.compile(r"&quot;", re.I), '"'), (re.compile("[\u2018\u2019\u201b\u2032]"), "'"),
    (re.compile("[\u201c\u201d\u201f\u00ab\u00bb\u2033]"), '"'), (re.compile("[\u2026\u0085]"), "..."),
    (re.compile("[\u2013\u2014\u2015]"), "--"), (re.compile("\u00bd"), "1/2"), (re.compile("\u00bc"), "1/4"),
    (re.compile("\u00be"), "3/4"),
]
# One alternative per kind of token, tried in order at each position (a small lexer).
_LEXER = re.compile(r"""
    (?P<space>\s+)
  | (?P<acronym>[A-Za-z](?:\.[A-Za-z])+\.?)(?!\w)                         # u.s.  t.v  a.m.
  | (?P<time>\d{1,2}:\d\d)(?=[AaPp][Mm]\b)                                # 6:40pm -> 6:40 pm
  | (?P<word>-?\d\w*(?:(?:[-/@_]|[.,:](?=\d)|'(?=\w))\w+)*                # 10,000  3.5  1:30  -5  9-11
      | [\w@]+(?:(?:[-/@_]|(?<=[A-Za-z])\.(?=[A-Za-z])|(?<=[A-Z])&(?=[A-Z])|'(?=\w))[\w@]+)*)  # AT&T  e-mail
  | (?P<apostrophe>'(?:[sSdDmM]|re|RE|ve|VE|ll|LL|em|EM|cause|n'|N'|\d0s)(?![\w'])  # 's  'em  '90s  'n'
      | '[tT](?=(?:is|IS|was|WAS)\b))                                      # 'tis -> 't is
  | (?P<quote>"|``|''|'|`)
  | (?P<stops>\.+)
  | (?P<shout>[!?]+)                                                      # "!!" and "?!" stay whole
  | (?P<dashes>--+|-)
  | (?P<other>.)
""", re.VERBOSE)
_SENTENCE_START = re.compile(r"\s+(?:A|An|The|This|That|These|Those|There|Their|They|Then|He|She|It|Its|In|On|"
                             r"At|As|We|You|I|If|His|Her|My|Our|But|And|So|What|When|Where|Who|Two)\b")


def ptb_tokenize(text: str) -> list[str]:
    """Pure-Python tokenisation following the rules of the toolkit's Java PTB tokeniser, with its
    lower-casing and punctuation removal: contractions split ("don't" -> do n't, "man's" ->
    man 's), punctuation split off words except in abbreviations (st., u.s.), numbers (10,000,
    3.5) and hyphenated words, runs like "!!" kept whole, brackets as -lrb-/-rrb-.

    Used when Java is missing; on the COCO and Flickr reference captions it agrees with the Java
    tokeniser on all but a handful of captions (see BENCHMARKS.md), so BLEU, ROUGE-L and CIDEr
    move at most in the fourth decimal.
    """
    for pattern, replacement in _NORMALISE:
        text = pattern.sub(replacement, text)
    tokens: list[str] = []
    pos, end = 0, len(text)
    while pos < end:
        m = _LEXER.match(text, pos)
        kind, token = m.lastgroup, m.group()
        pos = m.end()
        if kind == "space":
            continue
        if kind == "word":
            if pos < end and text[pos] == "." and _keeps_period(token, text, pos + 1):
                tokens.append(token + ".")
                pos += 1
                continue
            tokens.extend(_split_word(token))
        elif kind == "quote":
            tokens.append("''")
        elif kind == "stops":
            tokens.append("." if token == "." else "...")
        elif kind == "dashes":
            tokens.append(token if token == "-" else "--")
        elif kind == "other" and token in _BRACKETS:
            tokens.append(_BRACKETS[token])
        else:
            tokens.append(token)
    # Lower-case first, then filter, in the toolkit's order (so "-lrb-" survives, as there).
    return [t for t in (t.lower() for t in tokens) if t not in PTB_PUNCTUATION]


def _keeps_period(word: str, text: str, after: int) -> bool:
    """Whether the period after `word` (text[after - 1]) belongs to it, as an abbreviation's."""
    if word.lower() in _ABBREVIATIONS or word in _STATES or word.capitalize() in _STATES and word.isupper():
        return True
    if len(word) == 1 and word.isalpha():
        return _SENTENCE_START.match(text, after) is None
    return word in ("No", "no") and re.match(r"\s*\d", text[after:after + 3]) is not None   # "No. 5"


def _split_word(word: str) -> list[str]:
    """Contractions and the tokeniser's split words: "won't've" -> wo n't 've, "gonna" -> gon na,
    "rock'n'roll" -> rock 'n' roll; other inner apostrophes split unless after one letter (o'neil)."""
    lower = word.lower()
    if lower in _SPLIT_WORDS:
        cut = _SPLIT_WORDS[lower]
        return [word[:cut], word[cut:]]
    if lower.startswith("y'") and len(word) > 2:     # y'all, y'know
        return [word[:2]] + _split_word(word[2:])
    if "'n'" in lower and not lower.startswith("'n'"):
        at = lower.index("'n'")
        return _split_word(word[:at]) + [word[at:at + 3]] + (_split_word(word[at + 3:]) if word[at + 3:] else [])
    m = _CONTRACTION.match(word)
    if m is not None:   # can't -> ca n't, won't -> wo n't, as the Java tokeniser splits them
        stem, suffix = m.groups()
        return _split_word(stem) + [suffix]
    if "'" in word and not _KEPT_APOSTROPHE.match(word):
        return [part for part in word.split("'") if part]   # the apostrophe would be deleted anyway
    return [word]


# ----------------------------------------------------------------------------------------------
# METEOR (Java only) and all metrics together


def meteor(hypotheses: Sequence[Sequence[str]], references: Sequence[Sequence[Sequence[str]]]
           ) -> tuple[float, list[float]]:
    """METEOR 1.5 through the toolkit's own `Meteor` wrapper (its jar, run by Java): (corpus, per image).

    The corpus score is the jar's aggregate over all images, not the mean of the per-image
    scores, exactly as in the toolkit. The Java process is always shut down before returning.
    """
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not hypotheses:
        return 0.0, []
    scorer = _start_meteor()
    try:
        return _meteor_score(scorer, hypotheses, references)
    finally:
        _close_meteor(scorer)


def _start_meteor():
    """The toolkit's wrapper, its Java process started (it loads its paraphrase table on its own,
    for several seconds, while the caller does other work)."""
    if not java_available():
        raise JavaError("METEOR needs Java, and no `java` executable is on PATH")
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        raise JavaError("METEOR needs pycocoevalcap (pip install pycocoevalcap)") from None
    try:
        return Meteor()
    except OSError as e:
        raise JavaError(f"cannot start METEOR's Java process ({e.strerror or e})") from None


def _meteor_score(scorer, hypotheses, references) -> tuple[float, list[float]]:
    gts = {i: [" ".join(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [" ".join(h)] for i, h in enumerate(hypotheses)}
    try:
        score, scores = scorer.compute_score(gts, res)
    except (OSError, ValueError) as e:   # the JVM died (broken pipe) or answered something else than numbers
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise JavaError(f"METEOR's Java process failed ({detail})") from None
    return float(score), [float(s) for s in scores]


def _close_meteor(scorer) -> None:
    """Shut the wrapper's Java process down now rather than whenever the garbage collector runs.

    The wrapper's own __del__ takes its lock first; compute_score leaves that lock held when it
    raises, so a fresh lock is put in place for __del__, which then finds the process ended.
    """
    process = scorer.meteor_p
    for stream in (process.stdin, process.stdout, process.stderr):
        try:
            stream.close()
        except OSError:
            pass
    process.kill()
    process.wait()
    scorer.lock = threading.Lock()


METRICS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr")


@dataclass
class CocoScores:
    """The toolkit's metrics for one set: overall values, each image's, and what could not be done."""

    overall: dict[str, float]                 # keys from METRICS (METEOR absent without Java)
    per_image: list[dict[str, float]]         # in the order of the hypotheses given
    tokenizer: str                            # "java-ptb" (the toolkit's) or "python-ptb" (imitation)
    warnings: list[str] = field(default_factory=list)


BLEU = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4")


def coco_scores(hypotheses: Sequence[str], references: Sequence[Sequence[str]], java: bool | None = None,
                metrics: Sequence[str] = METRICS) -> CocoScores:
    """Score raw captions (one hypothesis and one or more references per image) as the coco-caption
    toolkit's COCOEvalCap does: PTB tokenisation, then BLEU-1..4, METEOR, ROUGE-L and CIDEr-D, on
    the toolkit's scale (fractions). SPICE is not computed (it needs a Stanford CoreNLP download).

    `java`: None uses Java when it is on PATH and otherwise falls back, with a warning, to the
    pure-Python tokenisation without METEOR; False forces that fallback; True requires Java
    (raises JavaError without it). METEOR's Java process starts first and scores in a thread, so
    its start-up and scoring overlap the tokenisation and the other metrics.
    `metrics`: the ones to compute (default all); the tokenisation is the same whatever is asked,
    so training's validation (`inference.score_captions`, BLEU only) gets the BLEU of evaluation.
    """
    _check_inputs(hypotheses, references, metrics)
    want_meteor = "METEOR" in metrics
    use_java = java_available() if java is None else java
    warnings = _fallback_warnings(want_meteor, java, use_java)
    scorer, meteor_result, worker = None, {}, None
    try:
        if use_java:
            try:
                scorer = _start_meteor() if want_meteor else None
            except JavaError as e:
                if java:
                    raise
                meteor_result["error"] = str(e)
            hyp_tokens, ref_tokens = _java_tokens(hypotheses, references, required=bool(java), warnings=warnings)
            if hyp_tokens is None:
                use_java = False
        if not use_java:
            hyp_tokens = [ptb_tokenize(h) for h in hypotheses]
            ref_tokens = [[ptb_tokenize(r) for r in refs] for refs in references]
        elif scorer is not None:
            worker = _meteor_thread(scorer, hyp_tokens, ref_tokens, meteor_result)
        overall, per_image = toolkit_scores(hyp_tokens, ref_tokens, metrics)
    finally:
        if worker is not None:
            worker.join()
        if scorer is not None:
            _close_meteor(scorer)
    _add_meteor(overall, per_image, meteor_result, use_java, warnings)
    return CocoScores({k: overall[k] for k in METRICS if k in overall and k in metrics},
                      [{k: row[k] for k in METRICS if k in row and k in metrics} for row in per_image],
                      "java-ptb" if use_java else "python-ptb", warnings)


def _fallback_warnings(want_meteor: bool, java: bool | None, use_java: bool) -> list[str]:
    """`coco_scores`'s first warnings: METEOR asked for but Java not found (`java` None) or refused (False)."""
    if want_meteor and java is None and not use_java:
        return ["METEOR: omitted: Java was not found on PATH (the toolkit's METEOR and PTB tokeniser "
                "are Java programs); BLEU, ROUGE-L and CIDEr use the pure-Python PTB tokenisation"]
    if want_meteor and java is False:
        return ["METEOR: omitted (Java not used); BLEU, ROUGE-L and CIDEr use the pure-Python PTB tokenisation"]
    return []


def _meteor_thread(scorer, hyp_tokens, ref_tokens, result: dict) -> threading.Thread:
    """METEOR scored in a started thread, so its Java process works while the other metrics are
    computed; it leaves `result["value"]` (overall, per image) or `result["error"]` (one line)."""
    def run_meteor():
        try:
            result["value"] = _meteor_score(scorer, hyp_tokens, ref_tokens)
        except JavaError as e:
            result["error"] = str(e)

    worker = threading.Thread(target=run_meteor, name="meteor", daemon=True)
    worker.start()
    return worker


def _add_meteor(overall: dict, per_image: list[dict], result: dict, use_java: bool, warnings: list[str]) -> None:
    """Put METEOR's scores from `_meteor_thread`'s `result` beside the others, or say why there are none."""
    if "value" in result:
        overall["METEOR"] = result["value"][0]
        for row, value in zip(per_image, result["value"][1]):
            row["METEOR"] = value
    elif "error" in result and use_java:
        warnings.append(f"METEOR: omitted: {result['error']}")


def _check_inputs(hypotheses, references, metrics) -> None:
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference sets")
    if not hypotheses:
        raise ValueError("no images to score")
    if any(len(refs) == 0 for refs in references):
        raise ValueError("an image has no references")


def _java_tokens(hypotheses, references, required: bool, warnings: list[str]):
    """(hypothesis tokens, reference tokens) from one run of the Java tokeniser, or (None, None)
    with a warning when it cannot run and Java is not required."""
    flat = list(hypotheses) + [r for refs in references for r in refs]
    try:
        tokens = ptb_tokenize_java(flat)
    except JavaError as e:
        if required:
            raise
        warnings.append(f"METEOR: omitted: {e}; BLEU, ROUGE-L and CIDEr use the pure-Python PTB tokenisation")
        return None, None
    hyp_tokens, ref_tokens, at = tokens[:len(hypotheses)], [], len(hypotheses)
    for refs in references:
        ref_tokens.append(tokens[at:at + len(refs)])
        at += len(refs)
    return hyp_tokens, ref_tokens
