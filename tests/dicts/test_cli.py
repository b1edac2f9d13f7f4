"""`mn dict ls/get/set/del` against the dict plane, as a person with an API key."""

from __future__ import annotations

import json

from typer.testing import CliRunner

import multinode as mn
from multinode.cli import app
from tests.dicts.conftest import DictPlane


def test_set_get_ls_del_from_the_terminal(as_app, dict_plane: DictPlane, fresh_name: str) -> None:
    as_app("alpha", token=dict_plane.key)
    runner = CliRunner()

    def mn_(*args: str) -> str:
        result = runner.invoke(app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    mn_("dict", "set", "alpha", fresh_name, "greeting", "hello")
    mn_("dict", "set", "alpha", fresh_name, "7", "[1, 2]", "--json", "--key-type", "int")
    assert mn_("dict", "get", "alpha", fresh_name, "greeting").strip() == "hello"
    assert json.loads(
        mn_("dict", "get", "alpha", fresh_name, "7", "--key-type", "int", "--json")
    ) == [1, 2]
    assert mn.get_dict(fresh_name, app="alpha")[7] == [1, 2]
    listing = json.loads(mn_("dict", "ls", "alpha", "--json"))
    assert {"name": fresh_name, "keys": 2} in listing
    assert sorted(mn_("dict", "ls", "alpha", fresh_name).split()) == ["'greeting'", "7"]
    mn_("dict", "del", "alpha", fresh_name, "greeting")
    missing = runner.invoke(app, ["dict", "get", "alpha", fresh_name, "greeting"])
    assert missing.exit_code == 1 and "no key 'greeting'" in missing.output
    refused = runner.invoke(app, ["dict", "get", "alpha", "bad name", "k"])
    assert refused.exit_code == 1 and "1 to 100 letters" in refused.output
