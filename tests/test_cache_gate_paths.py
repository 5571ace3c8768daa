"""The safety gate keeps the dots that open a path, a glob or a dotfile."""

from __future__ import annotations

import pytest

from governor.cache import gate_refusal


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("rm -rf /", "rm -rf ./"),
        ("what does rm -rf / do", "what does rm -rf ./ do"),
        ("what does rm -rf * do", "what does rm -rf .* do"),
        ("chmod -R 777 /", "chmod -R 777 ./"),
        ("is it safe to run chmod -R 777 /", "is it safe to run chmod -R 777 ./"),
        ("tar czf backup.tgz /", "tar czf backup.tgz ./"),
        ("rm -rf ../", "rm -rf ./"),
        ("rm -rf ./*", "rm -rf /*"),
        ("Run rm -rf ./.", "Run rm -rf /."),
        ("what is in .env", "what is in env"),
    ],
)
def test_leading_dots_refuse_a_match(cached: str, query: str) -> None:
    assert gate_refusal(cached, query) == "symbols"
    assert gate_refusal(query, cached) == "symbols"


@pytest.mark.parametrize(
    ("cached", "query"),
    [
        ("Run rm -rf /.", "Run rm -rf /"),
        ("Run rm -rf ./.", "Run rm -rf ./"),
        ("How do I list files in ./build?", "How do I list files in ./build"),
        ("What does .* match in a regex?", "What does .* match in a regex"),
        ("cat ~/.ssh/config", "cat ~/.ssh/config."),
        ("what does rm -rf ../ do", "what does rm -rf ../ do?"),
        ("Hello world. How are you?", "Hello world . How are you?"),
        ("Hello ..how are you?", "Hello how are you?"),
        ("..and then what happened?", "and then what happened?"),
    ],
)
def test_sentence_punctuation_and_unchanged_paths_pass(cached: str, query: str) -> None:
    assert gate_refusal(cached, query) is None
    assert gate_refusal(query, cached) is None
