"""What `mn deploy` uploads of an app's folder, and how it finds functions again."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap
from pathlib import Path

import pytest

import multinode as mn
from multinode import _source
from multinode._deploy import environment_request, load_app, package
from multinode.errors import InvalidRequestError


def write(folder: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(textwrap.dedent(content))


def test_the_folder_is_shipped_less_what_gitignore_and_habit_leave_out(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "app.py": "x = 1\n",
            "helpers.py": "y = 2\n",
            "data/table.csv": "a,b\n",
            ".gitignore": "*.log\nsecrets/\n",
            "run.log": "noise\n",
            "secrets/token.txt": "t\n",
            "pkg/.gitignore": "local.txt\n",
            "pkg/__init__.py": "",
            "pkg/local.txt": "only here\n",
            "other/local.txt": "kept: the rule is pkg's\n",
            "__pycache__/app.cpython-311.pyc": b"\0",
            ".git/HEAD": "ref\n",
            "env/pyvenv.cfg": "home = /usr\n",
            "env/lib/site.py": "z = 3\n",
            "node_modules/x/index.js": "",
        },
    )
    tree = _source.collect(tmp_path)
    assert sorted(tree.files) == [
        ".gitignore",
        "app.py",
        "data/table.csv",
        "helpers.py",
        "other/local.txt",
        "pkg/.gitignore",
        "pkg/__init__.py",
    ]
    assert tree.files["app.py"] == hashlib.sha256(b"x = 1\n").hexdigest()
    manifest = json.loads(tree.manifest)
    assert manifest == {"format": "mn-source/1", "files": dict(sorted(tree.files.items()))}


def test_a_folder_over_the_limit_is_refused_naming_its_largest_files(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": "x = 1\n", "model.bin": b"\0" * 4096})
    with pytest.raises(InvalidRequestError) as caught:
        _source.collect(tmp_path, max_bytes=1024)
    message = str(caught.value)
    assert "model.bin (0.0 MiB)" in message and ".mnignore" in message
    write(tmp_path, {".mnignore": "*.bin\n"})
    assert "model.bin" not in _source.collect(tmp_path, max_bytes=1024).files


def test_the_manifest_hash_changes_with_any_file_and_only_then(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": "x = 1\n", "b.txt": "b\n"})
    first = _source.collect(tmp_path).manifest_hash
    assert _source.collect(tmp_path).manifest_hash == first
    write(tmp_path, {"b.txt": "changed\n"})
    assert _source.collect(tmp_path).manifest_hash != first


def test_functions_of_an_app_file_travel_as_import_references(tmp_path: Path) -> None:
    name = "srcapp_" + tmp_path.name[-8:].replace("-", "_")
    write(
        tmp_path,
        {
            f"{name}.py": """
                import multinode as mn

                @mn.function
                def top(x):
                    return x

                def make():
                    @mn.function
                    def inner(x):
                        return x
                    return inner

                inner = make()
            """
        },
    )
    module, functions = load_app(tmp_path / f"{name}.py")
    assert module.__name__ == name  # imported under its own name, as on a VM
    code, blobs = package(list(functions.values()))
    reference = json.loads(blobs[code["top"]]())
    tree = _source.collect(tmp_path)
    assert reference == {
        "format": "mn-import/1",
        "module": name,
        "qualname": "top",
        "source": tree.manifest_hash,
    }
    # Defined inside another function: it cannot be imported, so it is pickled by value.
    assert blobs[code["inner"]]()[:1] == b"\x80"
    assert tree.manifest_hash in blobs


def test_an_app_file_named_like_a_standard_module_still_deploys(tmp_path: Path) -> None:
    write(tmp_path, {"json.py": "import multinode as mn\n\n@mn.function\ndef f():\n    return 1\n"})
    module, functions = load_app(tmp_path / "json.py")
    assert module.__name__ != "json" and sys.modules["json"].__name__ == "json"
    code, blobs = package(list(functions.values()))
    assert blobs[code["f"]]()[:1] == b"\x80"  # by value: `import json` would be the stdlib's


def test_requirements_come_from_requirements_txt_plus_the_functions_pip(tmp_path: Path) -> None:
    name = "reqapp_" + tmp_path.name[-8:].replace("-", "_")
    write(
        tmp_path,
        {
            "requirements.txt": "# the app's\npandas==2.2.3  # pinned\n\nhttpx>=0.27\n",
            f"{name}.py": """
                import multinode as mn

                @mn.function(pip=["humanize==4.17.0", "httpx>=0.27"])
                def f():
                    return 1

                @mn.function(python="3.12")
                def g():
                    return 1
            """,
        },
    )
    functions = load_app(tmp_path / f"{name}.py")[1]
    f = environment_request(functions["f"])
    g = environment_request(functions["g"])
    assert f is not None and g is not None
    assert f.requirements == ["pandas==2.2.3", "httpx>=0.27", "humanize==4.17.0"]
    assert f.python == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert (g.requirements, g.python) == (["pandas==2.2.3", "httpx>=0.27"], "3.12")


def test_pyproject_dependencies_count_when_there_is_no_requirements_txt(tmp_path: Path) -> None:
    write(tmp_path, {"pyproject.toml": '[project]\nname = "x"\ndependencies = ["rich>=13"]\n'})
    assert _source.app_requirements(tmp_path) == ["rich>=13"]
    assert _source.app_requirements(tmp_path / "nowhere") == []


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("-r other.txt", "is an option"),
        ("--index-url https://example.test/simple", "is an option"),
        ("./local-package", "local path"),
        ("pkg @ file:///tmp/pkg.whl", "local path"),
    ],
)
def test_a_requirements_line_the_build_cannot_use_is_refused_with_its_line(
    tmp_path: Path, line: str, says: str
) -> None:
    write(tmp_path, {"requirements.txt": f"rich\n{line}\n"})
    with pytest.raises(InvalidRequestError, match=says) as caught:
        _source.app_requirements(tmp_path)
    assert "requirements.txt:2" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"env": {"MN_APP": "x"}}, "reserved"),
        ({"env": {"1BAD": "x"}}, "not valid"),
        ({"env": {"OK": 1}}, "must be a string"),
        ({"env": ["A=1"]}, "a dict"),
        ({"secrets": "twitter"}, "a list of secret names"),
        ({"secrets": ["bad name"]}, "not valid"),
        ({"pip": "pandas"}, "a list of requirements"),
        ({"pip": ["-e ."]}, "is an option"),
        ({"python": 3.12}, "a minor version as a string"),
        ({"python": "3"}, "a minor version as a string"),
    ],
)
def test_bad_env_secrets_pip_or_python_fail_at_the_decorator(options: dict, says: str) -> None:
    with pytest.raises(InvalidRequestError, match=says):
        mn.function(**options)


def test_mn_home_is_never_shipped_and_an_app_inside_it_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    write(tmp_path, {"app.py": "x = 1\n", "home/local/secrets.key": "k\n", "home/app2.py": ""})
    monkeypatch.setenv("MN_HOME", str(home))
    assert sorted(_source.collect(tmp_path).files) == ["app.py"]
    with pytest.raises(InvalidRequestError, match="inside MN_HOME"):
        _source.collect(home)


def test_a_file_changed_after_hashing_is_not_uploaded_under_the_old_hash(tmp_path: Path) -> None:
    write(tmp_path, {"app.py": "x = 1\n", "run.log": "one\n"})
    tree = _source.collect(tmp_path)
    write(tmp_path, {"run.log": "two\n"})
    with pytest.raises(InvalidRequestError, match="changed while it was being deployed"):
        tree.read("run.log")
