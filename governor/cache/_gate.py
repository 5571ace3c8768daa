"""The safety gate: refuse a semantic match whose key content differs.

Sentence embeddings place a question and its negation, or the same question
about another city or number, almost on top of each other (issue #6, and the
measurements in ``docs/cache.md``). The gate compares what an embedding blurs:
negation, opposite words, the kind of question (why, where, when, who),
numbers and quantities, names and the roles they play, quoted text and
symbols such as ``==`` or ``c++``. Each
check errs on the side of a miss: a refused paraphrase costs one model call,
a wrong hit serves a wrong answer.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["GATE_CHECKS", "gate_refusal"]

GATE_CHECKS = (
    "negation",
    "polarity",
    "swap",
    "question",
    "numbers",
    "quantities",
    "entities",
    "quotes",
    "symbols",
    "edited",
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _pairs(text: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in text.split():
        key, value = pair.split(":")
        found[key] = value
    return found


# A minus sign that opens a number is part of it: "-5" is not "5".
_TOKEN = re.compile(r"(?:(?<![\w.])[-−](?=[$€£¥]?\d))?[$€£¥]?\w+(?:[’'.,\-]\w+)*%?")
_NUMBER = re.compile(r"^[-−]?[$€£¥]?\d+(?:[.,]\d+)*(?:st|nd|rd|th|s|k|m|x|%)?$")
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|`([^`]+)`|(?<!\w)\'([^\']+)\'(?!\w)')
_SYMBOL_RUN = re.compile(r"[^\w\s]+")
# Sentence punctuation, and lone brackets or dashes around asides, say nothing
# about what is asked; "==" versus "=", or "c++" versus "c", do.
_PUNCTUATION = ".,?!;:'\"’“”‘…"
_LONE_MARKS = _words("( ) - / – —")
_DOTTED = re.compile(r"[._\-]")
_SENTENCE_END = frozenset(".?!:;\n")
_SUFFIXES = ("'s", "ing", "ed", "ly", "es", "s")

# Asking for a reason, a place, a time or a person wants another answer; "how",
# "what" and "which" are left out because paraphrases swap them freely.
_QUESTION_WORDS = _words("why where when who whom whose")
# Words that carry no content of their own: an edit that only changes these
# ("how do I" / "how can I", "the" / "a") keeps the question.
_FUNCTION_WORDS = _words(
    """a an the this that these those is are was were be been being am do does
    did done have has had can could would should will shall may might must i
    me my mine you your yours we our ours us it its they them their he she him
    her his of to in on at by for with from as into onto about than then so
    and or but if please kindly just also very really any some there here
    what how which whether"""
)
# Shared words beyond which the shared text outweighs a short edit in the
# embedding; questions are shorter than this and are left to the threshold.
_SHARED_WORDS = 20
_SIGN_WORDS = _words("minus negative")
# Words that open a question; a sentence opened by one asks even without "?".
_ASKING = _QUESTION_WORDS | _words("how what which")
# A sentence ends at . ? or ! before white space, or at a line break ("3.5"
# and "e.g." stay whole).
_SENTENCE_BREAK = re.compile(r"(?<=[.?!])\s+|\n+")
# Negation words of English and of other languages the default (multilingual)
# embedder matches across: it scores a question and its negation as near
# duplicates in every one of them. Words that are common non-negations in
# another language ("en", "et", "nu", "personne") are left out.
_NEGATIONS = _words(
    """not no never none nobody nothing neither nor nowhere without cannot
    lack lacks lacking
    nicht kein keine keinen keinem keiner keines nie niemals nichts niemand
    ohne weder
    non mai nessuno nessuna niente nulla senza né
    não nao nunca nenhum nenhuma nada ninguém ninguem sem nem
    ningún ninguno ninguna nadie sin ni tampoco jamás
    pas jamais rien aucun aucune sans
    niet geen nooit niets zonder
    ikke ikkje inte ej aldri aldrig ingen inget intet ingenting uten uden utan
    nie nigdy nic nikt żaden żadna żadne bez nikdy nikdo
    не нет нельзя никогда ничего никто ни ні ніколи нічого ніхто
    değil hiç yok asla tidak bukan tak belum tanpa jangan
    niciodată nimic nimeni fără nem soha semmi senki nincs nélkül
    koskaan ilman δεν μην όχι ποτέ τίποτα χωρίς
    لا ليس لم لن بدون לא אין בלי नहीं मत बिना"""
)
# Scripts written without spaces: a negation is a part of a longer token.
_NEGATION_MARKS = (
    "不",
    "没",
    "沒",
    "無",
    "无",
    "别",
    "別",
    "未",
    "ない",
    "ません",
    "않",
    "없",
    "못",
)
# "one" is left out: far more often a pronoun ("which one") than a count.
_NUMBER_WORDS = _pairs(
    """zero:0 two:2 three:3 four:4 five:5 six:6 seven:7 eight:8
    nine:9 ten:10 eleven:11 twelve:12 thirteen:13 fourteen:14 fifteen:15
    sixteen:16 seventeen:17 eighteen:18 nineteen:19 twenty:20 thirty:30
    forty:40 fifty:50 sixty:60 seventy:70 eighty:80 ninety:90 hundred:100
    thousand:1000 million:1e6 billion:1e9 trillion:1e12 dozen:12 half:0.5
    twice:2x first:1st second:2nd third:3rd fourth:4th fifth:5th sixth:6th
    seventh:7th eighth:8th ninth:9th tenth:10th eleventh:11th twelfth:12th
    thirteenth:13th fourteenth:14th fifteenth:15th sixteenth:16th
    seventeenth:17th eighteenth:18th nineteenth:19th twentieth:20th
    thirtieth:30th fortieth:40th fiftieth:50th hundredth:100th"""
)
# Opposites an embedding scores as near-synonyms: a word on one side and its
# opposite on the other refuses the match.
_OPPOSITE_PAIRS = """
best:worst better:worse good:bad more:less more:fewer most:least
increase:decrease increase:reduce gain:lose gain:loss win:lose
advantage:disadvantage advantages:disadvantages pro:con pros:cons
benefit:drawback benefits:drawbacks positive:negative true:false high:low
higher:lower highest:lowest big:small bigger:smaller biggest:smallest
large:small larger:smaller largest:smallest fast:slow faster:slower
fastest:slowest cheap:expensive cheapest:expensive hot:cold warm:cold
before:after start:end begin:end first:last buy:sell love:hate like:hate
like:dislike agree:disagree always:never rich:poor old:young old:new
oldest:youngest strong:weak easy:hard easy:difficult men:women man:woman
male:female boy:girl boys:girls husband:wife father:mother son:daughter
brother:sister up:down open:close add:remove enable:disable import:export
input:output upload:download push:pull send:receive min:max
minimum:maximum inside:outside above:below over:under north:south
east:west left:right day:night past:future early:late long:short
longest:shortest heavy:light wet:dry safe:dangerous legal:illegal
success:failure succeed:fail accept:reject allow:forbid allow:prevent
include:exclude maximize:minimize encrypt:decrypt encode:decode
compress:decompress sync:async client:server frontend:backend debit:credit
birth:death asleep:awake bull:bear allow:block allow:deny even:odd
ascending:descending asc:desc synonym:antonym yesterday:tomorrow
beginner:expert beginner:advanced during:after during:before plus:minus
inner:outer read:write upper:lower uppercase:lowercase horizontal:vertical
row:column rows:columns previous:next public:private internal:external
inbound:outbound ingress:egress save:load serialize:deserialize
attach:detach morning:evening weekday:weekend on:off start:stop
import:export winner:loser
"""
# Present and past forms: "who is the CEO" and "who was the CEO" ask for
# different people. Refused only when the tense is all that changed; in a
# longer rewording a clause's tense says little.
_TENSES = _pairs("is:was are:were does:did do:did has:had have:had")
_TENSE_WORDS = frozenset(_TENSES) | frozenset(_TENSES.values())
# Words of one group name different things: one on each side refuses a match.
_EXCLUSIVE_GROUPS = (
    "monday tuesday wednesday thursday friday saturday sunday",
    "january february april june july august september october november december",
    "spring summer autumn winter",
)
_OPPOSITE: dict[str, set[str]] = {}
for _pair in _OPPOSITE_PAIRS.split():
    _a, _b = _pair.split(":")
    _OPPOSITE.setdefault(_a, set()).add(_b)
    _OPPOSITE.setdefault(_b, set()).add(_a)
for _group in _EXCLUSIVE_GROUPS:
    _members = _group.split()
    for _a in _members:
        _OPPOSITE.setdefault(_a, set()).update(m for m in _members if m != _a)
del _pair, _a, _b, _group, _members
_NEGATING_PREFIXES = (
    "un",
    "in",
    "im",
    "il",
    "ir",
    "dis",
    "non",
    "non-",
    "anti",
    "не",
    "nie",
    "ne",
)
# Small words of one kind that change the question when one is traded for
# another, however often each occurs elsewhere ("copy data to the server" and
# "from the server"; "can I give my dog ibuprofen" and "must I"; "ibuprofen
# and acetaminophen" and "or"). Counted: one gained while another is lost.
_SWAP_GROUPS = tuple(
    tuple(frozenset(member.split("/")) for member in group.split())
    for group in (
        "to from into/onto",
        "for against",
        "in out",
        "and or",
        "can/could/may/might must/shall should will/would",
        "i/me/my/mine/myself you/your/yours/yourself he/him/his she/her/hers "
        "we/us/our/ours they/them/their/theirs",
        "every/each/all any some",
        "this last next",
    )
)
# Prepositions that give a name its role: "from Paris to London" is not
# "from London to Paris", although every word is shared.
_ROLE_WORDS = _words("from to into than vs versus against before after over")
_SKIPPED_BEFORE_NAME = _words("a an the")
# Words that open a sentence with a capital letter without naming anything.
_COMMON = _words(
    """a about after all also am an and any are as at be because been before
    being but by can could did do does doing during each either even every
    for from give had has have having he her here hers him his how however i
    if in into is it its just let lets list may me might more most must my
    no nor not of on once one only or other our out own please should so
    some such tell than that the their them then there these they this those
    through to too under until up very was we were what when where whether
    which while who whom whose why will with would yes yet you your
    explain describe define compare summarize summarise write show name find
    suggest recommend provide create make help hi hello hey thanks thank
    okay ok now today tomorrow yesterday besides moreover why's what's
    how's who's where's when's i'm i've i'd i'll it's that's there's dear
    kindly imagine assume consider suppose use using get click see try go
    check pass set run call read learn note apart although though since
    instead additionally furthermore generally usually typically sometimes
    currently basically actually interested many several both another
    given following according in-order once whenever"""
)


@dataclass(frozen=True, slots=True)
class _Facts:
    tokens: tuple[str, ...]
    code: frozenset[str]
    words: frozenset[str]
    stems: frozenset[str]
    parts: frozenset[str]
    content: tuple[str, ...]
    negations: int
    numbers: Counter[str]
    quantities: Counter[tuple[str, str]]
    entities: tuple[str, ...]
    certain: frozenset[str]
    asks: frozenset[str]
    roles: frozenset[tuple[str, str]]
    quotes: frozenset[str]
    symbols: Counter[str]


def gate_refusal(cached: str, query: str) -> str | None:
    """Return why a cached question's answer must not serve ``query``, or None.

    Args:
        cached: the question whose answer is cached.
        query: the new question.

    Returns:
        One of :data:`GATE_CHECKS` naming the first difference found, or
        None when the gate finds none.
    """
    if cached == query:
        return None
    a, b = _facts(cached), _facts(query)
    if a.negations != b.negations:
        return "negation"
    if _opposed(a.words - b.words, b.words - a.words) or _retensed(a, b):
        return "polarity"
    if _swapped(a.tokens, b.tokens):
        return "swap"
    if a.asks != b.asks:
        return "question"
    if a.numbers != b.numbers:
        return "numbers"
    if a.quantities != b.quantities:
        return "quantities"
    if _names_differ(a, b) or _roles_differ(a, b) or _permuted(a, b):
        return "entities"
    if _ideographs_reordered(cached, query):
        return "entities"
    if a.quotes != b.quotes:
        return "quotes"
    if a.symbols != b.symbols:
        return "symbols"
    if _edited(a, b):
        return "edited"
    return None


@lru_cache(maxsize=4096)
def _facts(text: str) -> _Facts:
    tokens = _TOKEN.findall(text)
    lowered = [_fold(t) for t in tokens]
    numbers = _signed([_number(t) for t in lowered], lowered)
    entities = list(_entities(text, tokens))
    return _Facts(
        tokens=tuple(lowered),
        code=frozenset(_fold(t) for t in tokens if _is_identifier(t)),
        words=frozenset(lowered),
        stems=frozenset(_stem(w) for w in lowered),
        parts=frozenset(p for w in lowered for p in _DOTTED.split(w) if p),
        content=tuple(w for w in lowered if w not in _COMMON),
        negations=sum(_negations(w) for w in lowered),
        numbers=Counter(n for n in numbers if n is not None),
        quantities=Counter(
            q for sentence in _SENTENCE_BREAK.split(text) for q in _quantities(sentence)
        ),
        entities=tuple(e for e, _, _ in entities),
        certain=frozenset(e for e, _, sure in entities if sure),
        asks=frozenset(_asked(text)),
        roles=frozenset(_roles(lowered, entities)),
        quotes=frozenset(_fold(" ".join(g.split())) for g in _quoted(text)),
        symbols=Counter(_symbols(text)),
    )


def _edited(a: _Facts, b: _Facts) -> bool:
    """True when a long shared text differs by an edit that changes content.

    A document followed by "summarize it" and the same document followed by
    "translate it" embed almost alike: the shared text outweighs the short
    instruction, and an embedder that truncates long input may not see the
    instruction at all. So when most of both texts is the same run of
    words at the start and end, the words in between decide: their content
    words (by stem) must be the same on both sides.
    """
    ta, tb = a.tokens, b.tokens
    limit = min(len(ta), len(tb))
    head = 0
    while head < limit and ta[head] == tb[head]:
        head += 1
    tail = 0
    while tail < limit - head and ta[-1 - tail] == tb[-1 - tail]:
        tail += 1
    shared = head + tail
    if shared < _SHARED_WORDS or shared < max(len(ta), len(tb)) / 2:
        return False
    middle_a = _content_stems(a.tokens[head : len(a.tokens) - tail], a.code)
    middle_b = _content_stems(b.tokens[head : len(b.tokens) - tail], b.code)
    return middle_a != middle_b


def _content_stems(words: tuple[str, ...], code: frozenset[str]) -> set[str]:
    return {w if w in code else _stem(w) for w in words if w not in _FUNCTION_WORDS}


def _is_identifier(token: str) -> bool:
    """True for code names (getUser, max_len, v2): compared exactly, unstemmed."""
    return (
        "_" in token
        or any(ch.isupper() for ch in token[1:])
        or (any(ch.isdigit() for ch in token) and any(ch.isalpha() for ch in token))
    )


def _asked(text: str) -> Iterable[str]:
    """Yield the question words (why, where...) of the sentences that ask.

    In a statement "when" and "who" join clauses ("pass it when calling
    f()"); only in a question do they say what kind of answer is wanted.
    """
    for sentence in _SENTENCE_BREAK.split(text):
        words = [_fold(t) for t in _TOKEN.findall(sentence)]
        if words and (sentence.rstrip().endswith("?") or words[0] in _ASKING):
            yield from (w for w in words if w in _QUESTION_WORDS)


def _symbols(text: str) -> Iterable[str]:
    for match in _SYMBOL_RUN.finditer(text):
        run = match.group()
        kept = run.strip(_PUNCTUATION)
        if "!=" in run and "!=" not in kept:
            kept = "!" + kept  # "!=" is an operator, not a "!" before "="
        if kept == "/" and _stands_alone(text, match.start(), match.end()):
            yield " / "  # "rm -rf / srv/x" is not "rm -rf /srv/x"
        elif kept and kept not in _LONE_MARKS:
            yield kept


def _stands_alone(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] has white space (or an end) on both sides."""
    before = start == 0 or text[start - 1].isspace()
    after = end == len(text) or text[end].isspace()
    return before and after


def _fold(token: str) -> str:
    return token.lower().replace("’", "'")


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _swapped(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when one word of a swap group was traded for another of it."""
    count_a, count_b = Counter(a), Counter(b)
    for group in _SWAP_GROUPS:
        gained = lost = False
        for member in group:
            delta = sum(count_b[w] - count_a[w] for w in member)
            gained = gained or delta > 0
            lost = lost or delta < 0
        if gained and lost:
            return True
    return False


def _retensed(a: _Facts, b: _Facts) -> bool:
    """True when the only words changed are a present and its past form."""
    only_a, only_b = a.words - b.words, b.words - a.words
    if not (only_a | only_b) <= _TENSE_WORDS:
        return False
    return any(
        _TENSES.get(x) == y or _TENSES.get(y) == x for x in only_a for y in only_b
    )


def _negations(word: str) -> int:
    if word in _NEGATIONS or word.endswith("n't"):
        return 1
    if word.isascii():
        return 0
    return sum(word.count(mark) for mark in _NEGATION_MARKS)


def _number(word: str) -> str | None:
    if word in _NUMBER_WORDS:
        return _NUMBER_WORDS[word]
    if _NUMBER.match(word):
        # "1,000" and "1000" are one number; "3.5" keeps its point.
        return word.replace(",", "")
    return None


def _signed(numbers: list[str | None], words: list[str]) -> list[str | None]:
    """Apply a sign written as a word: "minus 5" and "negative five" are -5."""
    signed = list(numbers)
    for index in range(1, len(words)):
        number = signed[index]
        if number is not None and words[index - 1] in _SIGN_WORDS:
            signed[index] = "-" + number.lstrip("-−")
    return signed


def _quantities(sentence: str) -> Iterable[tuple[str, str]]:
    """Yield (number, unit) for each number followed by a word in a sentence."""
    words = [_fold(t) for t in _TOKEN.findall(sentence)]
    numbers = [_number(w) for w in words]
    for index, number in enumerate(numbers[:-1]):
        unit = words[index + 1]
        if number is not None and numbers[index + 1] is None and unit.isalpha():
            yield number, unit.rstrip("s")


def _quoted(text: str) -> Iterable[str]:
    for match in _QUOTED.finditer(text):
        yield next(group for group in match.groups() if group)


def _opposed(only_a: frozenset[str], only_b: frozenset[str]) -> bool:
    for word in only_a:
        if _OPPOSITE.get(word, set()) & only_b:
            return True
        for other in only_b:
            if _prefix_negated(word, other) or _prefix_negated(other, word):
                return True
    return False


def _prefix_negated(word: str, other: str) -> bool:
    if len(other) < 4 or not word.endswith(other):
        return False
    return word[: len(word) - len(other)] in _NEGATING_PREFIXES


def _entities(text: str, tokens: list[str]) -> Iterable[tuple[str, int, bool]]:
    """Yield each name (folded), its token position and whether it is sure.

    A capitalized word that opens a sentence may be a name ("Paris") or an
    ordinary word ("Transforms"); it is yielded as unsure.
    """
    position = 0
    sentence_start = True
    for index, token in enumerate(tokens):
        found = text.find(token, position)
        if found >= 0:
            if any(ch in _SENTENCE_END for ch in text[position:found]):
                sentence_start = True
            position = found + len(token)
        kind = _name_kind(token, sentence_start)
        if kind is not None:
            yield _fold(token), index, kind
        sentence_start = False


def _name_kind(token: str, sentence_start: bool) -> bool | None:
    """None for no name; True for a sure name; False for an opening capital."""
    letters = [ch for ch in token if ch.isalpha()]
    if not letters or _fold(token) in ("i", "i'm", "i've", "i'd", "i'll"):
        return None
    if any(ch.isdigit() for ch in token) and not _NUMBER.match(_fold(token)):
        return True  # product and site names: GPT-4, farm2stores.com, b2b
    if "_" in token.strip("_"):
        return True  # code names: max_len, load_dataset
    upper = sum(1 for ch in letters if ch.isupper())
    if upper == 0:
        return None
    if upper > 1 or not token[0].isupper():
        return True  # acronyms (NASA), mixed case (iPhone)
    if not sentence_start:
        return True
    return None if _fold(token) in _COMMON else False


def _roles(
    words: list[str], entities: list[tuple[str, int, bool]]
) -> Iterable[tuple[str, str]]:
    for name, index, _ in entities:
        before = index - 1
        while before >= 0 and words[before] in _SKIPPED_BEFORE_NAME:
            before -= 1
        if before >= 0 and words[before] in _ROLE_WORDS:
            yield name, words[before]


def _found(name: str, other: _Facts, code: frozenset[str]) -> bool:
    if name in other.words or name in other.parts:
        return True
    if name not in code and _stem(name) in other.stems:
        return True  # "Americans" and "American"; never "getUsers" and "getUser"
    # "datasets.Metric" is written "the Metric of datasets" elsewhere.
    parts = [p for p in _DOTTED.split(name) if p]
    return len(parts) > 1 and all(p in other.words for p in parts)


def _names_differ(a: _Facts, b: _Facts) -> bool:
    """True when a sure name is missing on the other side, or names swap.

    A name on one side must appear on the other, in any case: users type
    "python" and "Python" for the same thing. An unsure name (a capital that
    opens a sentence) may be dropped by a rewording, but not replaced by
    another name: "Paris weather?" is not "London weather?".
    """
    missing_a = [e for e in a.entities if not _found(e, b, a.code)]
    missing_b = [e for e in b.entities if not _found(e, a, b.code)]
    if any(e in a.certain for e in missing_a) or any(e in b.certain for e in missing_b):
        return True
    return bool(missing_a) and bool(missing_b)


def _roles_differ(a: _Facts, b: _Facts) -> bool:
    """True when a name shared by both sides is led by another role word."""
    shared = set(a.entities) & set(b.entities)
    return any(
        ra != rb and name in shared
        for name, ra in a.roles
        for other, rb in b.roles
        if other == name
    )


_IDEOGRAPH = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def _ideographs_reordered(a: str, b: str) -> bool:
    """True when the same Chinese, Japanese or Korean characters come in
    another order: "从北京到上海" is not "从上海到北京". Their sentences have
    no spaces, so the word-order check sees each as one word."""
    chars_a, chars_b = _IDEOGRAPH.findall(a), _IDEOGRAPH.findall(b)
    return (
        len(chars_a) > 1 and chars_a != chars_b and Counter(chars_a) == Counter(chars_b)
    )


def _permuted(a: _Facts, b: _Facts) -> bool:
    """True when both sides hold the same content words in another order.

    "Does a dog chase a cat?" and "Does a cat chase a dog?" share every word;
    only the order tells them apart. Plurals count as their singular:
    "terrorists who are Muslim" is not "Muslims who are terrorists".
    """
    if ("by" in a.words) != ("by" in b.words):
        return False  # active and passive voice order the same words differently
    # Function words only are left out: "list" or "set" opening a sentence
    # may be a command, but "a list to a dict" is not "a dict to a list".
    stems_a = [_stem(w) for w in a.tokens if w not in _FUNCTION_WORDS]
    stems_b = [_stem(w) for w in b.tokens if w not in _FUNCTION_WORDS]
    return (
        stems_a != stems_b and len(stems_a) > 1 and Counter(stems_a) == Counter(stems_b)
    )
