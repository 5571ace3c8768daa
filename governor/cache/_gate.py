"""The safety gate: refuse a semantic match whose key content differs.

Sentence embeddings place a question and its negation, or the same question
about another city or number, almost on top of each other (issue #6, and the
measurements in ``docs/cache.md``). The gate compares what an embedding blurs:
negation, opposite words, the kind of question (why, where, when, who),
numbers (in digits, words or numerals) and quantities, weekdays, names and
the roles they play, quoted text, symbols such as ``==`` or ``c++``, and the
indentation of code lines. Each
check errs on the side of a miss: a refused paraphrase costs one model call,
a wrong hit serves a wrong answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from difflib import SequenceMatcher
from functools import lru_cache
from itertools import pairwise

from governor.cache._request import normalize_query

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
    "characters",
    "case",
    "layout",
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
# Quoted text in straight, curly (a phone's smart quotes), backtick or
# guillemet quotes: the same text in any of them is the same quote.
_QUOTED = re.compile(
    r'"([^"]+)"|“([^”]+)”|`([^`]+)`|(?<!\w)\'([^\']+)\'(?!\w)'
    r"|(?<!\w)‘([^‘’]+)’(?!\w)|«\s?([^«»]+?)\s?»|„([^“”]+)[“”]"
)
_SYMBOL_RUN = re.compile(r"[^\w\s]+")
# A flag, a format code or a regex class: "-d", "--D", "%m", "\\S".
_FLAG = re.compile(r"(?<![\w-])(?:--?|%|\\)([A-Za-z]{1,2})\b")
# Operators made of sentence punctuation, which a symbol run would otherwise
# lose when its ends are stripped: optional chaining, walrus, elvis, lazy
# quantifiers, scope resolution ("??" is left out: prose doubles its "?").
_POLITE_OPENING = re.compile(r"^\s*(?:could|would|will|can)\s+you\b", re.IGNORECASE)
_OPTION_FLAG = re.compile(r"(?<![\w-])--?[A-Za-z][\w-]*")
_OPERATOR = re.compile(r"\?\.|\?:|:=|\*\?|\+\?|::")
# One or two dots that open a path, a glob or a dotfile ("./", "../", ".*",
# ".env"): a word or another dot before them makes them punctuation instead,
# and two dots before a word are an ellipsis ("..and then"), not a path.
_LEADING_DOTS = re.compile(r"(?<![\w.])(?:\.\.(?=[/\\])|\.(?=[/\\*~]|[^\W\d]))")
# A path, written from the root, home or here ("/etc/passwd", "./build/out",
# "~/.ssh"), or a relative one that ends in a file name ("src/app/main.py"):
# compared whole. "city/village/town" is prose.
# Marks that group or qualify a word in code and formulas; moved or dropped,
# they change what is asked ("(a + b) * c" / "a + (b * c)", "String?" /
# "String" in Kotlin, "https?://" / "https://" in a pattern).
_GROUPING_MARKS = re.compile(r"[()\[\]{}?]")
_BRACKETS = re.compile(r"[()\[\]{}]")
_SPACES = re.compile(r"\s+")
_PATH = re.compile(
    r"(?<![\w/])(?:~|\.{1,2})?/[\w.\-~/]*\w"
    r"|(?<![\w/])\w[\w.\-]*(?:/[\w.\-]+)+\.[A-Za-z0-9]{1,6}\b"
)
# Code: what a call or an index holds, and the name before it ("sum(values)",
# "items[0]"), written without a space as code is and prose is not.
_CALL = re.compile(r"([A-Za-z_][\w.]*)[(\[]([^()\[\]\n]{0,120})[)\]]")
# In a line of code, the name after one of these keywords is code too
# ("return totals"; in SQL, "SELECT name FROM users").
_CODE_LINE = re.compile(r"^\s*(?:def|class|return|import)\s")
# What prose puts in brackets after a word: a plural ("song(s)") or an aside
# with spaces and no comma, quote, digit or operator ("learn(in your view)").
_PROSE_BRACKET = re.compile(r"^(?:e?s|[^\d,=\"'+*/<>]*\s[^\d,=\"'+*/<>]*)$")
_SQL_LINE = re.compile(r"\b(?:SELECT|INSERT|UPDATE|DELETE)\b")
_CODE_KEYWORD = re.compile(
    r"\b(?:return|yield|import|raise|await|lambda|def|class)\s+([A-Za-z_][\w.]*)"
)
_SQL_KEYWORD = re.compile(
    r"\b(?:select|from|join|into|update|table|where|by)\s+([A-Za-z_][\w.]*)",
    re.IGNORECASE,
)
# Sentence punctuation, and lone brackets or dashes around asides, say nothing
# about what is asked; "==" versus "=", or "c++" versus "c", do.
_PUNCTUATION = ".,?!;:'\"’“”‘„«»…"
_LONE_MARKS = _words("( ) - / – —")
_DOTTED = re.compile(r"[._\-]")
# Words joined by dots, one of them two letters or longer: a site or a dotted
# name ("stripe.com", "os.path"), not an abbreviation ("e.g", "a.m").
_DOTTED_NAME = re.compile(r"^(?=.*[^\W\d_]{2})[^\W\d_]+(?:\.[^\W\d_]+)+$")
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
# Longer "words" (a run joined by commas or dots) are no typos of each other.
_LONGEST_WORD = 40
# Words between the shared start and end that a sequence match may read.
_MATCHED_WORDS = 400
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
    dont doesnt didnt isnt arent wasnt werent cant couldnt wont wouldnt
    shouldnt hasnt havent hadnt mustnt neednt aint
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
# German, French and Spanish counts up to twenty, the tens, hundred and
# thousand; the multilingual embedder scores "drei Jahre" and "acht Jahre"
# alike. Left out, like "one", are the articles (ein, un, uno...) and words
# that are also common English: null, seize, cent, once, quince.
_FOREIGN_NUMBER_WORDS = _pairs(
    """eins:1 zwei:2 drei:3 vier:4 fünf:5 fuenf:5 sechs:6 sieben:7 acht:8
    neun:9 zehn:10 elf:11 zwölf:12 zwoelf:12 dreizehn:13 vierzehn:14
    fünfzehn:15 fuenfzehn:15 sechzehn:16 siebzehn:17 achtzehn:18
    neunzehn:19 zwanzig:20 dreißig:30 dreissig:30 vierzig:40 fünfzig:50
    fuenfzig:50 sechzig:60 siebzig:70 achtzig:80 neunzig:90 hundert:100
    tausend:1000
    zéro:0 deux:2 trois:3 quatre:4 cinq:5 sept:7 huit:8 neuf:9 dix:10 onze:11
    douze:12 treize:13 quatorze:14 quinze:15 vingt:20 vingts:20 trente:30
    quarante:40 cinquante:50 soixante:60 mille:1000
    cero:0 dos:2 tres:3 cuatro:4 cinco:5 seis:6 siete:7 ocho:8 nueve:9
    diez:10 doce:12 trece:13 catorce:14 dieciséis:16 dieciseis:16
    diecisiete:17 dieciocho:18 diecinueve:19 veinte:20 veintiuno:21
    veintidós:22 veintidos:22 veintitrés:23 veintitres:23 veinticuatro:24
    veinticinco:25 veintiséis:26 veintiseis:26 veintisiete:27
    veintiocho:28 veintinueve:29 treinta:30 cuarenta:40 cincuenta:50
    sesenta:60 setenta:70 ochenta:80 noventa:90 cien:100 ciento:100
    mil:1000"""
)
_NUMBER_WORDS.update(_FOREIGN_NUMBER_WORDS)
# Counts that may join others in one token: "twenty-one", "dix-sept",
# "quatre-vingt-dix", "two-hundred". There "one" and the articles count.
_CARDINALS = {w: int(v) for w, v in _NUMBER_WORDS.items() if v.isdigit()}
_CARDINALS |= dict.fromkeys(("one", "un", "une", "uno", "una", "ein", "eine"), 1)
_ORDINALS = {w: int(v[:-2]) for w, v in _NUMBER_WORDS.items() if v.endswith("th")}
_ORDINALS |= {"first": 1, "second": 2, "third": 3}
_MULTIPLIERS = _words(
    "hundred thousand hundert tausend vingt vingts mille cien ciento mil"
)
# Words that join the parts of a written number: "vingt-et-un", "treinta y uno".
_NUMBER_JOINERS = _words("and et y und")
_UNITS = frozenset(range(1, 10))
# German writes the unit before the tens in one word: "einundzwanzig".
_GERMAN_COMPOUND = re.compile(
    r"^(ein|zwei|drei|vier|fünf|fuenf|sechs|sieben|acht|neun)und"
    r"(zwanzig|dreißig|dreissig|vierzig|fünfzig|fuenfzig|sechzig|siebzig|"
    r"achtzig|neunzig)$"
)
# A token of digits and hyphens or slashes, without letters: a date
# (2020-03-03), a range (10-15) or a phone number (555-123-4567).
_DIGIT_RUN = re.compile(r"^[-−]?\d+(?:[-–/.,:]\d+)+$")
# Chinese and Japanese numerals. A lone 一 is left out, like "one": it is
# mostly an article or part of a word (一起, 一下, 第一).
_CJK_NUMERAL = re.compile(r"[零〇一二两兩三四五六七八九十百千万萬亿億]+")
_CJK_DIGITS = {ch: i for i, ch in enumerate("零一二三四五六七八九")} | {
    "〇": 0,
    "两": 2,
    "兩": 2,
}
_CJK_UNITS = {"十": 10, "百": 100, "千": 1000}
_CJK_MYRIADS = {"万": 10**4, "萬": 10**4, "亿": 10**8, "億": 10**8}
# Words built from numerals that are not counts: 十分 (very), 万一 (in case),
# 千万 (by all means), 一一 (one by one).
_CJK_NOT_COUNTS = re.compile(r"十分|万一|千万|一一")
# Weekdays and halves of the day: the same question on another day or at
# another time wants another answer. Each maps to a label shared across
# languages ("monday", "montag", "周一" and "月曜" are one day).
_WEEKDAYS = {
    word: f"day{number}"
    for number, names in enumerate(
        (
            "monday montag lundi lunes",
            "tuesday dienstag mardi martes",
            "wednesday mittwoch mercredi miércoles miercoles",
            "thursday donnerstag jeudi jueves",
            "friday freitag vendredi viernes",
            "saturday samstag sonnabend samedi sábado sabado",
            "sunday sonntag dimanche domingo",
        ),
        start=1,
    )
    for word in names.split()
}
_CJK_WEEKDAY = re.compile(
    r"(?:周|週|星期|礼拜|禮拜)([一二三四五六日天])|([月火水木金土日])曜|"
    r"([월화수목금토일])요일"
)
_CJK_WEEKDAY_NUMBER = (
    {ch: i for i, ch in enumerate("一二三四五六日", start=1)}
    | {"天": 7}
    | {ch: i for i, ch in enumerate("月火水木金土日", start=1)}
    | {ch: i for i, ch in enumerate("월화수목금토일", start=1)}
)
_DAY_PARTS = {
    **dict.fromkeys(("上午", "早上", "早晨", "午前", "오전"), "morning"),
    **dict.fromkeys(("下午", "午後", "오후"), "afternoon"),
    **dict.fromkeys(("晚上", "傍晚", "夜里", "夜間", "夜间"), "evening"),
    **dict.fromkeys(("中午", "正午"), "noon"),
    **dict.fromkeys(("凌晨", "深夜"), "night"),
}
_DAY_PART = re.compile("|".join(sorted(_DAY_PARTS, key=len, reverse=True)))
# "7 a.m." and "7 p.m." (the tokens keep their inner dot: "a.m", "p.m").
_CLOCK_HALVES = {"a.m": "am", "p.m": "pm"}
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
import:export winner:loser grant:revoke merge:split create:drop
create:delete add:delete push:pop healthy:harmful love:dislike benefit:risk
benefits:risks raise:lower raise:reduce increase:lower today:tomorrow
today:yesterday soft:hard ban:allow ban:unban zip:unzip older:younger
elder:younger earlier:later longer:shorter heavier:lighter stronger:weaker
deep:shallow deeper:shallower wide:narrow wider:narrower thick:thin
thicker:thinner hotter:colder warmer:colder near:far nearer:farther
closer:farther cheaper:pricier above:beneath least:most
"""
# Present and past forms: "who is the CEO" and "who was the CEO" ask for
# different people. Refused only when the tense is all that changed; in a
# longer rewording a clause's tense says little.
# Words a request adds or drops without changing what it asks.
_FILLERS = _words(
    """please pls plz kindly thanks thank thx ty cheers hi hello hey just
    really actually exactly basically simply explain tell show me
    bitte danke eigentlich eigentlich merci svp vraiment gracias favor
    grazie favore"""
)
# Verbs that open a request to make or do something.
_INSTRUCTION_VERBS = _words(
    """write explain create generate make give list summarize summarise
    translate draft compose describe rewrite design build plan suggest
    outline produce prepare convert format draw name compare find"""
)
_POLITE_OPENERS = _words("can could would will you u i")
# Two letters that make a new word of another, not a spelling of it.
_WORD_PREFIXES = frozenset({"re", "un", "de", "no", "ex"})
# Words a letter or two apart that name different things.
_DISTINCT = frozenset(
    frozenset(pair.split(":"))
    for pair in _words(
        """hire:fire formal:normal causal:casual java:javascript
        niger:nigeria iran:iraq austria:australia slovenia:slovakia
        gambia:zambia sweden:swiss"""
    )
)
# Everyday synonyms: one traded for another in an otherwise identical
# request asks the same thing (see _edited). Each line is one group.
_SYNONYMS = """
big large huge
small little tiny
film movie
pic picture photo
get obtain
make create
need require
entire whole
buy purchase
start begin
finish end
fast quick quickly rapidly
help assist
use utilize
show display
choose select pick
correct right
mistake error
smart intelligent clever
rich wealthy
kid child
kids children
someone somebody one
anyone anybody
everyone everybody
cannot can't cant
suggest recommend
fix repair
benefits advantages
benefit advantage
delete remove
gift present
weird strange
cheque check
doughnut donut
sulphur sulfur
draught draft
plough plow
holiday vacation
"""
_SYNONYM_GROUP = {
    word: group.split()[0]
    for group in _SYNONYMS.strip().splitlines()
    for word in group.split()
}
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
# Prefixes of opposite sense: the same stem after each names opposite things
# ("input" / "output", "overpaid" / "underpaid", "hyperthyroidism" /
# "hypothyroidism", "encrypt" / "decrypt", "subclass" / "superclass").
_OPPOSED_PREFIXES = (
    ("in", "out"),
    ("in", "ex"),
    ("im", "ex"),
    ("in", "de"),
    ("en", "de"),
    ("up", "down"),
    ("over", "under"),
    ("hyper", "hypo"),
    ("pre", "post"),
    ("inter", "intra"),
    ("micro", "macro"),
    ("sub", "super"),
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
        "if unless until",
    )
)
# Each swap-group word's group and member: "can" and "could" are one member.
_SWAP_PLACE = {
    word: (at, kind)
    for at, group in enumerate(_SWAP_GROUPS)
    for kind, member in enumerate(group)
    for word in member
}
# Phrases that bound a number from below and from above: "up to 5 users"
# and "at least 5 users" ask for opposite limits.
_LOWER_BOUNDS = frozenset(
    tuple(phrase.split()) for phrase in ("at least", "or more", "no less", "no fewer")
)
_UPPER_BOUNDS = frozenset(
    tuple(phrase.split())
    for phrase in ("up to", "at most", "or less", "or fewer", "no more")
)
# Prepositions that mark a role: where to, where from, by whom or how much,
# for whom, against what, with what. Between texts otherwise the same, one
# traded for another changes the question ("an email for our customer" /
# "from our customer", "reduce the dose by 2 mg" / "to 2 mg"). Prepositions
# of topic and place (of, about, on, in, at) are left out: questions trade
# them freely ("the syllabus for IAS" / "of IAS", "books on" / "about").
_ROLE_PREPOSITIONS = _words(
    "to from into onto by for toward towards against with without"
)
# Prepositions that give a number its role: "reduce the dose by 2 mg" is a
# change, "to 2 mg" a target, "from 2 mg" a start. Elsewhere "by" and "to"
# trade freely ("it is loaded by calling f" / "to load it, call f").
_NUMBER_ROLE_WORDS = _words("by to from into")
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
    given following according in-order once whenever can't cannot couldn't
    don't doesn't didn't isn't aren't wasn't weren't won't wouldn't
    shouldn't haven't hasn't hadn't mustn't let's"""
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
    calendar: Counter[str]
    number_roles: frozenset[tuple[str, str]]
    quantities: Counter[tuple[str, str]]
    entities: tuple[str, ...]
    certain: frozenset[str]
    asks: frozenset[str]
    roles: frozenset[tuple[str, str]]
    quotes: frozenset[str]
    symbols: Counter[str]
    paths: frozenset[str]


def gate_refusal(cached: str, query: str) -> str | None:
    """Return why a cached question's answer must not serve ``query``, or None.

    Both questions are best passed as written: the gate normalizes them as
    the cache does (see :func:`normalize_query`) for its word checks, and
    reads quoted text and compatibility characters (full-width forms,
    ligatures, no-break spaces) in the form given, where that folding would
    erase the very thing asked about.

    Args:
        cached: the question whose answer is cached.
        query: the new question.

    Returns:
        One of :data:`GATE_CHECKS` naming the first difference found, or
        None when the gate finds none.
    """
    if cached == query:
        return None
    a = _facts(_politely(normalize_query(cached)))
    b = _facts(_politely(normalize_query(query)))
    if a.negations != b.negations:
        return "negation"
    if _opposed(a.words - b.words, b.words - a.words) or _retensed(a, b):
        return "polarity"
    if _bounds_crossed(a.tokens, b.tokens):
        return "polarity"
    if _swapped(a.tokens, b.tokens) or _preposition_traded(a.tokens, b.tokens):
        return "swap"
    if _number_roles_differ(a.number_roles, b.number_roles):
        return "swap"
    if a.asks != b.asks:
        return "question"
    if a.numbers != b.numbers or a.calendar != b.calendar:
        return "numbers"
    if a.quantities != b.quantities:
        return "quantities"
    if _names_differ(a, b) or _roles_differ(a, b):
        return "entities"
    if _permuted(a, b) and not _clause_fronted(cached, query):
        return "entities"
    if _ideographs_reordered(cached, query):
        return "entities"
    if a.quotes != b.quotes or _quotes(cached) != _quotes(query):
        return "quotes"
    if a.symbols != b.symbols or _marks_moved(cached, query):
        return "symbols"
    if a.paths != b.paths:
        return "entities"
    if _marks(cached) != _marks(query):
        return "characters"
    if _cased_apart(cached, query):
        return "case"
    if _layout_differs(cached, query):
        return "layout"
    if _flags(cached) != _flags(query):
        return "symbols"
    if _edited(a, b):
        return "edited"
    return None


@lru_cache(maxsize=4096)
def _facts(text: str) -> _Facts:
    tokens = _TOKEN.findall(text)
    lowered = [_fold(t) for t in tokens]
    numbers = _signed(_joined_tens([_number(t) for t in lowered], lowered), lowered)
    numbers.extend(_cjk_numbers(text))
    entities = list(_entities(text, tokens))
    code_names = frozenset(_code_names(text))
    entities.extend((name, -1, True) for name in code_names)
    return _Facts(
        tokens=tuple(lowered),
        code=code_names | {_fold(t) for t in tokens if _is_identifier(t)},
        words=frozenset(lowered),
        stems=frozenset(_stem(w) for w in lowered),
        parts=frozenset(p for w in lowered for p in _DOTTED.split(w) if p),
        content=tuple(w for w in lowered if w not in _COMMON),
        negations=sum(_negations(w) for w in lowered),
        numbers=Counter(n for n in numbers if n),
        calendar=Counter(_calendar(text, lowered)),
        number_roles=frozenset(
            (number, lowered[at - 1])
            for at, number in enumerate(numbers[: len(lowered)])
            if number and at and lowered[at - 1] in _NUMBER_ROLE_WORDS
        ),
        quantities=Counter(
            q for sentence in _SENTENCE_BREAK.split(text) for q in _quantities(sentence)
        ),
        entities=tuple(e for e, _, _ in entities),
        certain=frozenset(e for e, _, sure in entities if sure),
        asks=frozenset(_asked(text)),
        roles=frozenset(_roles(lowered, entities)),
        quotes=frozenset(_fold(g) for g in _quoted(text)),
        symbols=Counter(_symbols(text)),
        paths=frozenset(_PATH.findall(text)),
    )


@lru_cache(maxsize=4096)
def _quotes(text: str) -> frozenset[str]:
    """The quoted strings as written (but for case): their spacing counts."""
    return frozenset(_fold(quoted) for quoted in _quoted(text))


def _cased_apart(a: str, b: str) -> bool:
    """True when a flag or a code name both texts hold is written in another
    case: ``-d`` and ``-D``, ``%m`` and ``%M``, ``\\s`` and ``\\S``,
    ``getUser`` and ``GetUser``.

    Elsewhere case is how people type ("WhatsApp" / "whatsapp", "SQL" /
    "sql"), so it is left alone.
    """
    forms_a, forms_b = _case_forms(a), _case_forms(b)
    return any(forms_a[key] != forms_b[key] for key in forms_a.keys() & forms_b.keys())


@lru_cache(maxsize=4096)
def _case_forms(text: str) -> dict[str, frozenset[str]]:
    """Flags and format codes, and mixed-case code names, by their folded form.

    A code name counts only in its mixed-case forms (``getUser``,
    ``GetUser``): a side that writes it in lower case says nothing of case.
    """
    forms: dict[str, set[str]] = {}
    for flag in _FLAG.findall(text):
        forms.setdefault("flag:" + flag.lower(), set()).add(flag)
    for token in _TOKEN.findall(text):
        rest = token[1:]
        if any(ch.isupper() for ch in rest) and any(ch.islower() for ch in rest):
            forms.setdefault(token.lower(), set()).add(token)
    return {key: frozenset(found) for key, found in forms.items()}


@lru_cache(maxsize=4096)
def _marks(text: str) -> Counter[str]:
    return Counter(_compatibility_marks(text))


def _code_names(text: str) -> Iterable[str]:
    """Yield the words that stand in code: a letter apart is another name.

    Code names are compared exactly, never stemmed: ``sum(values)`` against
    ``sum(value)`` asks about another variable, and ``FROM users`` against
    ``FROM user`` about another table.
    """
    for line in text.split("\n"):
        calls = [m for m in _CALL.finditer(line) if not _PROSE_BRACKET.match(m[2])]
        for match in calls:
            yield _fold(match.group(1))
            yield from (_fold(t) for t in _TOKEN.findall(match.group(2)))
        if calls or _CODE_LINE.search(line):
            yield from (_fold(m) for m in _CODE_KEYWORD.findall(line))
        if _SQL_LINE.search(line):
            yield from (_fold(m) for m in _SQL_KEYWORD.findall(line))


def _compatibility_marks(text: str) -> Iterable[str]:
    """Yield the characters that compatibility folding would rewrite.

    Full-width letters and digits, no-break spaces, the micro sign: a
    question may be about one of them ("why is x\u00a0= 1 a syntax
    error?"), so one side's must be the other's. Left out are what plain
    typing and copying produce: punctuation (full-width question marks and
    commas are how Chinese and Japanese are typed), full-width letters and
    digits among Chinese or Japanese text (an input method's), a no-break
    space between two letters or digits ("5\u00a0kg", from a web page) and
    the Latin ligatures of text copied from a PDF.
    """
    if text.isascii():
        return
    east_asian = _IDEOGRAPH.search(text) is not None
    for at, ch in enumerate(text):
        if ch.isascii() or not _rewritten(ch) or _LIGATURES[0] <= ch <= _LIGATURES[1]:
            continue
        if east_asian and ch.isalnum() and ch in _FULL_WIDTH:
            continue
        if ch in _NO_BREAK_SPACES and _between_words(text, at):
            continue
        yield ch


_LIGATURES = ("\ufb00", "\ufb06")
_FULL_WIDTH = frozenset(chr(c) for c in range(0xFF01, 0xFF5F))
_NO_BREAK_SPACES = frozenset("\u00a0\u2007\u202f")


def _between_words(text: str, at: int) -> bool:
    """Whether ``text[at]`` has a letter or digit on both sides."""
    return 0 < at < len(text) - 1 and text[at - 1].isalnum() and text[at + 1].isalnum()


@lru_cache(maxsize=1024)
def _rewritten(ch: str) -> bool:
    if unicodedata.category(ch).startswith("P"):
        return False
    return unicodedata.normalize("NFKC", ch) != ch


def _edited(a: _Facts, b: _Facts) -> bool:
    """True when the texts differ by an edit that changes content.

    Two cases. A long shared text: a document followed by "summarize it"
    and the same document followed by "translate it" embed almost alike
    (the shared text outweighs the short instruction, and an embedder that
    truncates long input may not see the instruction at all). So when most
    of both texts is the same words in the same order, wherever the edits
    are, the words around them decide: the content words (by stem) of the
    edited parts must be the same on both sides. And one word traded for
    another in an otherwise identical request ("a script that deletes files
    older / newer than a week", "a formal / casual email"): an embedder
    scores it near 1 whatever the word means, so it is refused unless the
    two are one word spelled two ways (a typo, British and American
    spelling, a shortened form).
    """
    ta, tb = a.tokens, b.tokens
    blocks = _opcodes(ta, tb)
    edits = [block for block in blocks if block[0] != "equal"]
    if not edits:
        return False
    if _one_word_traded(edits, ta, tb, a.code | b.code):
        return True
    equal = [i2 - i1 for tag, i1, i2, _, _ in blocks if tag == "equal"]
    # A shared passage (a document), not words shared here and there by a
    # rewording: one run of at least _SHARED_WORDS words, and half of both.
    if max(equal, default=0) < _SHARED_WORDS or sum(equal) < max(len(ta), len(tb)) / 2:
        return False
    middle_a = _content_stems(tuple(w for e in edits for w in ta[e[1] : e[2]]), a.code)
    middle_b = _content_stems(tuple(w for e in edits for w in tb[e[3] : e[4]]), b.code)
    return middle_a != middle_b


_Opcode = tuple[str, int, int, int, int]


def _opcodes(ta: tuple[str, ...], tb: tuple[str, ...]) -> list[_Opcode]:
    """How ``ta`` becomes ``tb``: equal runs and edits, as difflib gives them.

    The shared start and end are taken off first (linear), so the sequence
    match, quadratic on repetitive text, runs on what is left between them,
    and only while that is short: past it, the middle is one edit.
    """
    limit = min(len(ta), len(tb))
    head = 0
    while head < limit and ta[head] == tb[head]:
        head += 1
    tail = 0
    while tail < limit - head and ta[-1 - tail] == tb[-1 - tail]:
        tail += 1
    end_a, end_b = len(ta) - tail, len(tb) - tail
    blocks: list[_Opcode] = [("equal", 0, head, 0, head)] if head else []
    middle_a, middle_b = ta[head:end_a], tb[head:end_b]
    if len(middle_a) + len(middle_b) <= _MATCHED_WORDS:
        matcher = SequenceMatcher(None, middle_a, middle_b, autojunk=False)
        blocks += [
            (tag, i1 + head, i2 + head, j1 + head, j2 + head)
            for tag, i1, i2, j1, j2 in matcher.get_opcodes()
        ]
    elif middle_a or middle_b:
        blocks.append(("replace", head, end_a, head, end_b))
    if tail:
        blocks.append(("equal", end_a, len(ta), end_b, len(tb)))
    return blocks


def _one_word_traded(
    edits: Sequence[tuple[str, int, int, int, int]],
    ta: tuple[str, ...],
    tb: tuple[str, ...],
    code: frozenset[str],
) -> bool:
    """True when the only edit trades one content word for another word, or
    adds or drops up to three words holding a content word ("a short poem" /
    "a poem", "to a child" / nothing)."""
    if len(edits) != 1:
        return False
    tag, i1, i2, j1, j2 = edits[0]
    if tag in ("insert", "delete"):
        # In an instruction every modifier shapes the output ("a short
        # poem"); in a question an added word rarely changes the answer.
        if not (_instruction(ta) and _instruction(tb)):
            return False
        return _few_words_changed(ta[i1:i2], tb[j1:j2], code)
    if i2 - i1 != 1 or j2 - j1 != 1:
        return False
    x, y = ta[i1], tb[j1]
    if x in _FUNCTION_WORDS or y in _FUNCTION_WORDS:
        return False
    if any(ch.isdigit() for ch in x + y) or x in _NUMBER_WORDS or y in _NUMBER_WORDS:
        return False  # "two" for "2": the numbers check has compared them
    if x in code or y in code:
        return x != y
    return not _spelled_alike(x, y)


def _instruction(tokens: tuple[str, ...]) -> bool:
    """True for a request that asks for something to be made or done
    ("Write a poem", "Could you please explain ..."), not a question."""
    for word in tokens[:4]:
        if word in _INSTRUCTION_VERBS:
            return True
        if word not in _FILLERS and word not in _POLITE_OPENERS:
            return False
    return False


def _few_words_changed(
    old: tuple[str, ...], new: tuple[str, ...], code: frozenset[str]
) -> bool:
    """True when up to three words added or dropped carry content (not
    politeness, not a filler)."""
    if max(len(old), len(new)) > 3:
        return False
    kept_old = {_stem(w) for w in old if _carries_content(w, code)}
    kept_new = {_stem(w) for w in new if _carries_content(w, code)}
    if any(_spelled_alike(x, y) for x in kept_old for y in kept_new):
        return False
    return kept_old != kept_new


def _carries_content(word: str, code: frozenset[str]) -> bool:
    if word in code:
        return True
    word = re.split("['’]", word, maxsplit=1)[0]  # "what's" is "what"
    return bool(word) and (
        word not in _FUNCTION_WORDS
        and word not in _FILLERS
        and word not in _NEGATIONS  # the negation check has compared them
        and not any(ch.isdigit() for ch in word)
        and word not in _NUMBER_WORDS
    )


def _spelled_alike(x: str, y: str) -> bool:
    """One word written two ways: same stem, a common synonym (film,
    movie), one a shortened form of the other (legit, legitimate; put,
    input), or a small slip of spelling (favourite, favorite; brust,
    burst)."""
    if _stem(x) == _stem(y) or _plain(x) == _plain(y):
        return True
    group = _synonym_group(x)
    if group is not None and group == _synonym_group(y):
        return True
    if frozenset((x, y)) in _DISTINCT or _roles_apart(x, y):
        return False
    short, long = sorted((x, y), key=len)
    if len(short) >= 4 and long.startswith(short):
        return True
    extra = long[: len(long) - len(short)]
    if len(short) >= 3 and len(extra) <= 2 and long.endswith(short):
        return extra not in _WORD_PREFIXES  # "put" and "input", not "restore"
    if len(short) < 4 or x[0] != y[0] or len(long) > _LONGEST_WORD:
        return False  # a slip of spelling keeps the first letter of a word
    allowed = 1 if len(long) < 8 else 2
    return _edit_distance(x, y, allowed + 1) <= allowed


def _roles_apart(x: str, y: str) -> bool:
    """employer / employee, lessor / lessee: the two sides of a deal."""
    return any(
        a.endswith("ee") and b[-2:] in ("er", "or") and a[:-2] == b[:-2]
        for a, b in ((x, y), (y, x))
    )


def _synonym_group(word: str) -> str | None:
    """The synonym group of ``word`` or of its base form (needed -> need,
    required -> require, making -> make), or None."""
    forms = [word, _plain(word)]
    if word.endswith("ed"):
        forms += [word[:-2], word[:-1]]
    if word.endswith("ing"):
        forms += [word[:-3], word[:-3] + "e"]
    return next((_SYNONYM_GROUP[f] for f in forms if f in _SYNONYM_GROUP), None)


def _plain(word: str) -> str:
    """A plural or third-person form brought to its base: families ->
    family, companies -> company, pics -> pic."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _edit_distance(x: str, y: str, cap: int) -> int:
    """Damerau-Levenshtein distance (adjacent swaps count one), or ``cap``
    once it is reached."""
    if abs(len(x) - len(y)) >= cap:
        return cap
    before: list[int] | None = None
    row = list(range(len(y) + 1))
    for i, cx in enumerate(x, 1):
        current = [i] + [0] * len(y)
        for j, cy in enumerate(y, 1):
            cost = cx != cy
            current[j] = min(row[j] + 1, current[j - 1] + 1, row[j - 1] + cost)
            if (
                before is not None
                and i > 1
                and j > 1
                and cx == y[j - 2]
                and x[i - 2] == cy
            ):
                current[j] = min(current[j], before[j - 2] + 1)
        before, row = row, current
        if min(row) >= cap:
            return cap
    return min(row[-1], cap)


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
        words = [_uncontracted(_fold(t)) for t in _TOKEN.findall(sentence)]
        if words and (sentence.rstrip().endswith("?") or words[0] in _ASKING):
            yield from (w for w in words if w in _QUESTION_WORDS)


def _uncontracted(word: str) -> str:
    """ "who's" read as "who"; the typographic apostrophe too."""
    for ending in ("'s", "’s"):
        if word.endswith(ending):
            return word[: -len(ending)]
    return word


def _symbols(text: str) -> Iterable[str]:
    for match in _SYMBOL_RUN.finditer(text):
        run = match.group()
        lead = _leading_dots(text, match.start(), run)
        operators = _OPERATOR.findall(run)
        if operators:
            yield from operators  # "?." and ":=" are not sentence punctuation
            run = _OPERATOR.sub(" ", run)
        kept = lead + run.strip(_PUNCTUATION)
        if "!=" in run and "!=" not in kept:
            kept = "!" + kept  # "!=" is an operator, not a "!" before "="
        if kept == "/" and _stands_alone(text, match.start(), match.end()):
            yield " / "  # "rm -rf / srv/x" is not "rm -rf /srv/x"
        elif kept and kept not in _LONE_MARKS:
            yield kept


def _leading_dots(text: str, start: int, run: str) -> str:
    """The dots that open a path or a glob in the symbol run at ``start``.

    Stripped as sentence punctuation they would leave ``./`` and ``/``, or
    ``.*`` and ``*``, the same symbol; a final period is still punctuation.
    """
    opening = run[: len(run) - len(run.lstrip(_PUNCTUATION))]
    dots = len(opening) - len(opening.rstrip("."))
    found = _LEADING_DOTS.match(text, start + len(opening) - dots) if dots else None
    return found.group() if found else ""


def _marks_moved(a: str, b: str) -> bool:
    """True when the same characters are grouped by brackets otherwise, or
    qualified by a question mark on one side only (see ``_GROUPING_MARKS``).

    White space, case and the closing punctuation are not compared, and
    brackets only when both sides hold the same ones: prose adds and drops
    brackets around an aside ("things (such as cold showers)").
    """
    bare_a, bare_b = _bare(a), _bare(b)
    if bare_a == bare_b:
        return False
    if _GROUPING_MARKS.sub("", bare_a) != _GROUPING_MARKS.sub("", bare_b):
        return False
    return Counter(_BRACKETS.findall(bare_a)) == Counter(_BRACKETS.findall(bare_b))


def _bare(text: str) -> str:
    return _SPACES.sub("", text).lower().rstrip(_PUNCTUATION)


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
            word = word[: -len(suffix)]
            break
    # "tables" loses "es" and "table" its "e": both are "tabl".
    return word[:-1] if len(word) > 3 and word.endswith("e") else word


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


def _preposition_traded(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when the texts differ only by small words of one kind put in
    each other's places: role prepositions ("for our customer" / "from our
    customer"), or members of a swap group moved while their counts stay
    ("a and b or c" / "a or b and c", "from x to y" / "to x from y")."""
    if len(a) != len(b):
        return False
    changed = [(x, y) for x, y in zip(a, b, strict=True) if x != y]
    return bool(changed) and all(_one_kind(x, y) for x, y in changed)


def _one_kind(x: str, y: str) -> bool:
    if x in _ROLE_PREPOSITIONS and y in _ROLE_PREPOSITIONS:
        return True
    place_x, place_y = _SWAP_PLACE.get(x), _SWAP_PLACE.get(y)
    if place_x is None or place_y is None:
        return False
    return place_x[0] == place_y[0] and place_x[1] != place_y[1]


def _bounds_crossed(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """True when one side bounds from below where the other bounds from
    above ("up to 5" / "at least 5", "or more" / "or fewer")."""
    lower_a, upper_a = _bounds(a)
    lower_b, upper_b = _bounds(b)
    return (lower_a > lower_b and upper_b > upper_a) or (
        lower_b > lower_a and upper_a > upper_b
    )


def _bounds(tokens: tuple[str, ...]) -> tuple[int, int]:
    pairs = list(pairwise(tokens))
    lower = sum(pair in _LOWER_BOUNDS for pair in pairs)
    return lower, sum(pair in _UPPER_BOUNDS for pair in pairs)


def _number_roles_differ(
    a: frozenset[tuple[str, str]], b: frozenset[tuple[str, str]]
) -> bool:
    """True when a number both sides lead with a role word has another one."""
    return any(na == nb and ra != rb for na, ra in a for nb, rb in b)


def _layout_differs(a: str, b: str) -> bool:
    """True when a line both texts hold is indented otherwise, or repeated.

    Line structure can change what code means: ``print("done")`` under a
    loop runs three times, after it once. The gate's word checks cannot see
    it, so a line written on both sides must sit at the same indentation, as
    often, on both.
    """
    if "\n" not in a and "\n" not in b:
        return False
    lines_a, lines_b = _indented_lines(a), _indented_lines(b)
    return any(lines_a[line] != lines_b[line] for line in lines_a.keys() & lines_b)


def _indented_lines(text: str) -> dict[str, list[int]]:
    """Each non-blank line's text and the indentations it appears at."""
    found: dict[str, list[int]] = {}
    for line in text.expandtabs(8).split("\n"):
        body = line.strip()
        if body:
            found.setdefault(body, []).append(len(line) - len(line.lstrip()))
    return found


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
    if _DIGIT_RUN.match(word) or _numeric_only(word):
        return word  # a date, a range, a phone number, "2³", "①": exactly
    if "-" in word:
        return _hyphenated(word)
    german = _GERMAN_COMPOUND.match(word)
    if german:
        unit = 1 if german[1] == "ein" else _CARDINALS[german[1]]
        return str(unit + _CARDINALS[german[2]])
    return None


def _numeric_only(word: str) -> bool:
    """True for a token of number characters and no letter: "2³", "①", "½"."""
    return any(ch.isnumeric() for ch in word) and not any(ch.isalpha() for ch in word)


def _hyphenated(word: str) -> str | None:
    """The numbers written in words in a hyphenated token, or None.

    "twenty-one" is 21, "thirty-first" 31st, "quatre-vingt-dix" 90,
    "three-year-old" 3 and "ten-fifteen" the range 10-15.
    """
    groups: list[str] = []
    run: list[tuple[int, bool, bool]] = []
    for part in word.split("-"):
        if part in _CARDINALS or part in _ORDINALS:
            ordinal = part in _ORDINALS
            value = _ORDINALS[part] if ordinal else _CARDINALS[part]
            run.append((value, ordinal, part in _MULTIPLIERS))
        elif not (run and part in _NUMBER_JOINERS):
            groups.extend(_compounded(run))
            run = []
            if part in _NUMBER_WORDS:
                groups.append(_NUMBER_WORDS[part])
    groups.extend(_compounded(run))
    return "-".join(groups) or None


def _compounded(run: list[tuple[int, bool, bool]]) -> list[str]:
    """Join number words into the numbers they write: [20, 1] is 21.

    Each word comes as (value, ordinal, multiplier). A unit after tens adds
    ("twenty-one", "dix-sept"); a hundred, a thousand or a French "vingt"
    after a smaller number multiplies ("two-hundred", "quatre-vingt"); any
    other sequence is a list or a range ("five-six", "ten-fifteen"). A lone
    "one" is dropped, as it is on its own ("one-off", "no-one").
    """
    numbers: list[tuple[int, bool]] = []
    for value, ordinal, multiplier in run:
        last = numbers[-1][0] if numbers and not numbers[-1][1] else None
        if last is not None and multiplier and 0 < last < value:
            numbers[-1] = (last * value, ordinal)
        elif last is not None and last % 10 == 0 and value < (last % 100 or 100):
            numbers[-1] = (last + value, ordinal)
        else:
            numbers.append((value, ordinal))
    if len(run) == 1 and numbers[0] == (1, False):
        return []
    return [_ordinal(n) if ordinal else str(n) for n, ordinal in numbers]


def _ordinal(number: int) -> str:
    if number % 100 in (11, 12, 13):
        return f"{number}th"
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    return f"{number}{suffix}"


def _joined_tens(numbers: list[str | None], words: list[str]) -> list[str | None]:
    """Join tens and a unit written apart: "twenty one", "treinta y uno".

    The words joined into the tens are marked "" (part of the number before).
    """
    joined = list(numbers)
    for index, word in enumerate(words):
        tens = _CARDINALS.get(word)
        if tens is None or tens % 10 or not 20 <= tens <= 90:
            continue
        after = index + 1
        if after < len(words) - 1 and words[after] in _NUMBER_JOINERS:
            after += 1
        unit = _CARDINALS.get(words[after]) if after < len(words) else None
        if unit in _UNITS and joined[index] is not None:
            joined[index] = str(tens + (unit or 0))
            joined[index + 1 : after + 1] = [""] * (after - index)
    return joined


def _cjk_numbers(text: str) -> Iterable[str]:
    """Yield the Chinese or Japanese numerals of ``text`` as numbers."""
    for match in _CJK_NUMERAL.finditer(_CJK_NOT_COUNTS.sub(" ", text)):
        if match.group() != "一":
            yield str(_cjk_value(match.group()))


def _cjk_value(numeral: str) -> int:
    """三 is 3, 十五 15, 二十五 25, 一百零五 105, 两千 2000, 二〇二四 2024."""
    total = section = digit = 0
    for ch in numeral:
        if ch in _CJK_DIGITS:
            digit = digit * 10 + _CJK_DIGITS[ch]  # 二〇二四: digits in a row
        elif ch in _CJK_UNITS:
            section += (digit or 1) * _CJK_UNITS[ch]
            digit = 0
        else:
            total += (section + digit or 1) * _CJK_MYRIADS[ch]
            section = digit = 0
    return total + section + digit


def _calendar(text: str, words: list[str]) -> Iterable[str]:
    """Yield the weekdays and halves of the day ``text`` names."""
    for word in words:
        day = _WEEKDAYS.get(word) or _WEEKDAYS.get(word.removesuffix("s"))
        if day is not None:
            yield day
    for match in _CJK_WEEKDAY.finditer(text):
        mark = next(group for group in match.groups() if group)
        yield f"day{_CJK_WEEKDAY_NUMBER[mark]}"
    for match in _DAY_PART.finditer(text):
        yield _DAY_PARTS[match.group()]
    for word in words:
        half = _CLOCK_HALVES.get(word)
        if half is not None:
            yield half


def _signed(numbers: list[str | None], words: list[str]) -> list[str | None]:
    """Apply a sign written as a word: "minus 5" and "negative five" are -5."""
    signed = list(numbers)
    for index in range(1, len(words)):
        number = signed[index]
        if number and words[index - 1] in _SIGN_WORDS:
            signed[index] = "-" + number.lstrip("-−")
    return signed


def _quantities(sentence: str) -> Iterable[tuple[str, str]]:
    """Yield (number, unit) for each number followed by a word in a sentence."""
    tokens = _TOKEN.findall(sentence)
    words = [_fold(t) for t in tokens]
    numbers = _joined_tens([_number(w) for w in words], words)
    read = [
        (n, w, t) for n, w, t in zip(numbers, words, tokens, strict=True) if n != ""
    ]
    for (number, _, _), (next_number, unit, written) in pairwise(read):
        if number is not None and next_number is None and unit.isalpha():
            yield number, _unit(unit, written)


def _unit(folded: str, written: str) -> str:
    """A unit as compared: folded, but for a short symbol whose case is its
    meaning ("MW" / "mW", "MBps" / "Mbps"); plurals count as one."""
    if len(written) <= 4 and written not in (folded, written.capitalize()):
        return written
    return folded.rstrip("s")


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
            if _prefix_opposed(word, other) or _prefix_opposed(other, word):
                return True
    return False


def _prefix_negated(word: str, other: str) -> bool:
    if len(other) < 4 or not word.endswith(other):
        return False
    return word[: len(word) - len(other)] in _NEGATING_PREFIXES


def _prefix_opposed(word: str, other: str) -> bool:
    """True for the same stem after opposite prefixes (input / output)."""
    for first, second in _OPPOSED_PREFIXES:
        if word.startswith(first) and other.startswith(second):
            stem = word[len(first) :]
            if len(stem) >= 3 and stem == other[len(second) :]:
                return True
    return False


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
    if _DOTTED_NAME.match(token):
        return True  # sites and dotted names: acme.com, os.path, node.js
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
    if len(parts) > 1 and all(p in other.words or p in other.parts for p in parts):
        return True
    # A site named bare where the other side names none: "Is stripe.com
    # safe?" and "Is Stripe safe?" ("stripe.com" and "stripe.org" differ).
    return (
        "." in name
        and parts[0] in other.words
        and not any(_DOTTED_NAME.match(word) for word in other.words)
    )


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
# The share of both texts' characters that must be shared for their order to
# be compared.
_SHARED_IDEOGRAPHS = 0.8


def _ideographs_reordered(a: str, b: str) -> bool:
    """True when the Chinese, Japanese or Korean characters both texts share
    come in another order: "从北京到上海" is not "从上海到北京", and
    "请帮我给张经理写信" (I write to Zhang) is not "请张经理帮我写信" (Zhang
    writes for me). Their sentences have no spaces, so the word-order check
    sees each as one word. The shared characters must be most of both
    texts: a rewording that adds or drops a few is still compared."""
    chars_a, chars_b = _IDEOGRAPH.findall(a), _IDEOGRAPH.findall(b)
    shared = Counter(chars_a) & Counter(chars_b)
    size = sum(shared.values())
    if size < 2 or size < _SHARED_IDEOGRAPHS * max(len(chars_a), len(chars_b)):
        return False
    return _kept(chars_a, shared) != _kept(chars_b, shared)


def _kept(chars: list[str], shared: Counter[str]) -> list[str]:
    """``chars`` in order, each kept as often as ``shared`` counts it."""
    left = Counter(shared)
    kept = []
    for ch in chars:
        if left[ch] > 0:
            left[ch] -= 1
            kept.append(ch)
    return kept


def _politely(text: str) -> str:
    """A request opened with could / would / will you read as "can you":
    the modal is politeness there, not a question of ability or will."""
    return _POLITE_OPENING.sub("can you", text, count=1)


def _clause_fronted(x: str, y: str) -> bool:
    """True when one text is the other with its opening clause moved to the
    end: "In Python, how do I reverse a list?" / "How do I reverse a list in
    Python?" ask the same thing."""
    for first, other in ((x, y), (y, x)):
        lead, comma, rest = first.partition(",")
        if not comma or not rest.strip():
            continue
        moved = f"{rest.strip().rstrip('?.!')} {lead.strip()}"
        tokens = _facts(normalize_query(moved)).tokens
        if tokens == _facts(normalize_query(other)).tokens:
            return True
    return False


def _flags(text: str) -> Counter[str]:
    """Command-line flags (``-v``, ``--all``): each names its own option."""
    return Counter(m.group() for m in _OPTION_FLAG.finditer(text))


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
