"""Prompt styles (data/prompts.py): one spec per template, and everything derived from them."""

import pytest

from orchestrator.config import schema
from orchestrator.data.instruct import Sample
from orchestrator.data.prompts import STYLES, TooLong, format_templates, generation_prompt, render
from orchestrator.data.templates import vicuna_v11_text


def test_the_schema_choices_are_the_registered_styles():
    assert schema.TEMPLATES == tuple(STYLES)
    assert schema.FORMAT_TEMPLATES == format_templates()
    assert set(format_templates()) <= set(schema.DATA_FORMATS) | set(schema.PROMPT_FORMATS)
    assert format_templates()["sharegpt"] == ("vicuna_v1.1", "koala")


@pytest.mark.parametrize("name", sorted(STYLES))
def test_every_style_renders_prompts_and_keeps_its_keys(name):
    st = STYLES[name]
    s = Sample([("user", "Name a colour."), ("assistant", "Blue.")])
    pieces = render(name, s)
    text = "".join(p.text or "" for p in pieces)
    assert "Name a colour." in text and "Blue." in text
    assert any(p.trained for p in pieces)
    prompt = generation_prompt(name, "Name a colour.")
    assert "Name a colour." in prompt and "Blue." not in prompt
    for key in st.special_tokens:  # the keys made single tokens do occur in the text
        assert key in text + prompt
    if st.stop_text:
        assert st.stop_text in text + prompt
    assert st.source


def test_vicuna_prompt_is_fastchat_v11():
    turns = [("user", "Hi"), ("assistant", "Hello")]
    assert vicuna_v11_text(turns).startswith(generation_prompt("vicuna_v1.1", "Hi"))
    assert STYLES["vicuna_v1.1"].too_long == TooLong.SPLIT_ROUNDS


def test_an_unknown_template_names_the_known_ones():
    with pytest.raises(KeyError, match="known"):
        render("nope", Sample([("user", "a"), ("assistant", "b")]))
