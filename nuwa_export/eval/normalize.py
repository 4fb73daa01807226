"""Answer normalisation for exact-match scoring.

:func:`evalai` is the VQA challenge's answer processing (EvalAI's, which lmms-eval's TextVQA
task applies to the prediction and to each of the ten human answers): lower case, punctuation
rules that treat ``3,000`` and ``a,b`` differently, number words to digits, articles dropped,
apostrophe-less contractions restored. :func:`simple` is the GQA rule: case and punctuation
ignored.
"""

from __future__ import annotations

import re
import string

_NUMBERS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"\.(?!\d)")  # a period not followed by a digit ("2.5" keeps its point)
_DIGIT_COMMA = re.compile(r"(?<=\d),+(?=\d)")

#: Contractions as the VQA evaluation restores them: each key is its canonical form with one
#: apostrophe left out ("dont" → "don't", "hed've" and "he'dve" → "he'd've").
_CONTRACTED = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't
haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am mightn't mightn't've
might've mustn't must've needn't not've o'clock oughtn't shan't she'd've should've shouldn't
shouldn't've somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's
something'd something'd've something'll that's there'd there'd've there're there's they'd
they'd've they'll they're they've 'twas wasn't we'd've we've weren't what'll what're what's
what've when's where'd where's where've who'd who'd've who'll who's who've why'll why're why's
won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're you've
""".split()


def _one_apostrophe_dropped(word: str) -> list[str]:
    return [word[:i] + word[i + 1 :] for i, c in enumerate(word) if c == "'"]


CONTRACTIONS = {variant: word for word in _CONTRACTED for variant in _one_apostrophe_dropped(word)}
CONTRACTIONS["somebody'd"] = "somebodyd"  # the reference table has this one reversed; kept for parity


def _punctuation(text: str) -> str:
    out = text
    digit_comma = _DIGIT_COMMA.search(text) is not None
    for p in _PUNCT:
        if p + " " in text or " " + p in text or digit_comma:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def _digits_articles(text: str) -> str:
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def evalai(answer: str) -> str:
    """EvalAI's VQA answer normalisation."""
    text = answer.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_articles(_punctuation(text))


_STRIP_PUNCT = str.maketrans("", "", string.punctuation)


def simple(answer: str) -> str:
    """Case and ASCII punctuation ignored (lmms-eval's ``exact_match`` with both flags), ends trimmed."""
    return answer.lower().translate(_STRIP_PUNCT).strip()
