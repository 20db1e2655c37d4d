"""Input rows: one JSON object a line, token ids that fit the model, errors naming file:line."""

import pytest

from megatron_bond.config import ConfigError
from megatron_bond.jsonl import check_token_ids, read_objects


def test_read_objects_skips_blank_lines_and_names_the_bad_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text('{"tokens": [1, 2]}\n\n{"text": "hi"}\n[1, 2]\n')
    rows = read_objects(path)
    assert next(rows) == (f"{path}:1", {"tokens": [1, 2]})
    assert next(rows) == (f"{path}:3", {"text": "hi"})
    with pytest.raises(ConfigError, match=f"{path}:4: expected a JSON object"):
        next(rows)


def test_check_token_ids_accepts_ids_below_the_vocab():
    check_token_ids([0, 5, 9], 10, "row")


@pytest.mark.parametrize("tokens", [[], [0, 10], [-1], [1.0, 2], [True], "12", None])
def test_check_token_ids_refuses_anything_else(tokens):
    with pytest.raises(ConfigError, match=r"row: tokens must be a non-empty list of ids in \[0, 10\)"):
        check_token_ids(tokens, 10, "row")
