"""The JSON-with-comments reader: comments and trailing commas go, strings stay intact."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from torchpqt.cli.jsonc import loads_jsonc, strip_comments
from torchpqt.errors import CliError


def test_line_and_block_comments():
    text = '''/* header
    over two lines */
    {
        "a": 1, // one
        /* inline */ "b": [1, 2, /* two */ 3]
    }'''
    assert loads_jsonc(text) == {"a": 1, "b": [1, 2, 3]}


def test_comment_markers_inside_strings_are_kept():
    text = '{"url": "http://host/a", "glob": "dir/*.png", "end": "*/", "q": "say \\"//hi\\""} // c'
    assert loads_jsonc(text) == {"url": "http://host/a", "glob": "dir/*.png", "end": "*/", "q": 'say "//hi"'}


def test_trailing_commas_are_accepted_like_jstyleson():
    assert loads_jsonc('{"a": [1, 2,], "b": {"c": 3,},}') == {"a": [1, 2], "b": {"c": 3}}
    assert loads_jsonc('{"a": ",]", "b": 1}') == {"a": ",]", "b": 1}


def test_stripping_keeps_positions():
    text = '{"a": 1, // x\n /* y\n z */ "b": 2}'
    stripped = strip_comments(text)
    assert len(stripped) == len(text)
    assert stripped.count("\n") == text.count("\n")


def test_syntax_error_reports_the_original_line_and_column():
    text = '// comment\n/* block\n */\n{"a": 1\n "b": 2}'
    with pytest.raises(CliError, match=r"cfg.json:5:2: invalid JSON"):
        loads_jsonc(text, "cfg.json")


def test_unterminated_comment():
    with pytest.raises(CliError, match="unterminated /\\* comment at line 2 column 3"):
        loads_jsonc('{\n  /* open "a": 1}')


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='ab/*",\\\n ]}'),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet='k/*"', max_size=4), inner,
                                                                 max_size=4),
    max_leaves=12)


@given(json_values)
def test_plain_json_round_trips(value):
    # strings full of comment markers, quotes and brackets must survive untouched
    assert loads_jsonc(json.dumps(value)) == value
    assert loads_jsonc(json.dumps(value, indent=2) + " // trailing comment") == value
