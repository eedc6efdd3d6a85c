"""Prompt styles (data/prompts.py): one spec per template, and everything derived from them."""

import pytest

from orchestrator.compose import names
from orchestrator.data.instruct import Sample
from orchestrator.data.prompts import STYLES, TooLong, format_templates, generation_prompt, render
from orchestrator.data.templates import vicuna_v11_text


def test_the_composed_choices_are_the_registered_styles():
    assert names.TEMPLATES == tuple(STYLES)
    assert names.FORMAT_TEMPLATES == format_templates()
    assert set(format_templates()) <= set(names.DATA_FORMATS) | set(names.PROMPT_FORMATS)
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


def test_composing_a_job_checks_template_and_format_names_naming_the_file():
    """The schema checks structure; composition checks the names against the registries (a
    worker's from_dict too), and the error still names the job file and the command line."""
    from orchestrator.compose.load import compose, from_dict, to_dict
    from orchestrator.config.schema import ConfigError

    with pytest.raises(ConfigError, match=r"vicuna.yaml.*data.template='nope'.*choose one of"):
        compose("vicuna", "local", ["data.template=nope"])
    with pytest.raises(
        ConfigError, match=r"data.template='alpaca' cannot read data.format='sharegpt'"
    ):
        compose("vicuna", "local", ["data.template=alpaca"])
    sent = to_dict(compose("vicuna", "local"))
    sent["data"]["template"] = "nope"
    with pytest.raises(ConfigError, match=r"data.template='nope'"):
        from_dict(sent)
