"""The distribution as users install it: metadata, console script, typed package, module entry point."""

from __future__ import annotations

import argparse
import ast
import itertools
import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import mcp_secrets
from conftest import command_parsers
from mcp_secrets.cli import build_parser
from mcp_secrets.config import Settings
from mcp_secrets.gateway import load_gateway_config
from mcp_secrets.serving import desktop_config


def test_distribution_is_named_mcp_secrets_with_the_package_version() -> None:
    assert metadata.version("mcp-secrets") == mcp_secrets.__version__


def test_the_licence_is_an_spdx_expression_and_no_licence_classifier_contradicts_it() -> None:
    # PEP 639: PyPI refuses an upload that has both a License-Expression and a "License ::" classifier.
    installed = metadata.metadata("mcp-secrets")
    assert installed["License-Expression"] == "MIT"
    assert not [name for name in installed.get_all("Classifier") or [] if name.startswith("License ::")]


def test_console_script_points_at_the_launcher_which_closes_the_process_before_the_cli() -> None:
    scripts = {ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")}
    assert scripts["mcp-secrets"] == "mcp_secrets.launch:main"


def test_package_is_marked_typed() -> None:
    assert (Path(mcp_secrets.__file__).parent / "py.typed").is_file()


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mcp_secrets", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip() == f"mcp-secrets {mcp_secrets.__version__}"


def test_public_api_is_exported() -> None:
    for name in ("Secrets", "SecretEncryptor", "SecretsError", "open_secrets", "Settings"):
        assert name in mcp_secrets.__all__
        assert hasattr(mcp_secrets, name)


def test_a_name_the_package_does_not_have_fails_type_checking_and_those_it_has_pass(tmp_path: Path) -> None:
    # The public names are imported when first used, through a module __getattr__: seen by mypy, its
    # Any made every name pass, a misspelt one (`open_secret`) among them, which failed only when run.
    service = tmp_path / "service.py"
    service.write_text(
        "from mcp_secrets import Secrets, SecretsError, open_secret, open_secrets\n"
        "secrets: Secrets = open_secrets()\n"
        "values: dict[str, str] = secrets.get_secrets('alice', 'github')\n"
        "error: type[Exception] = SecretsError\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), str(service)],
        capture_output=True,
        text=True,
        check=False,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    typo = 'Module "mcp_secrets" has no attribute "open_secret"; maybe "open_secrets"?  [attr-defined]'
    assert errors == [f"{service}:1: error: {typo}"], done.stdout


def test_errors_share_one_base_class() -> None:
    errors = [
        mcp_secrets.InvalidInputError,
        mcp_secrets.SecretNotFoundError,
        mcp_secrets.StoreUnavailableError,
        mcp_secrets.DecryptionError,
        mcp_secrets.UnauthorisedError,
        mcp_secrets.ConfigurationError,
    ]
    assert all(issubclass(error, mcp_secrets.SecretsError) for error in errors)
    assert all(error.__doc__ and error.__doc__.startswith("Raised when") for error in errors)


@pytest.mark.parametrize(
    "release",
    [
        pytest.param("2.10.0", id="CVE-2024-53861-issuer-matched-as-a-substring"),
        pytest.param("2.10.1", id="CVE-2026-32597-unknown-crit-header-accepted"),
        pytest.param("2.12.1", id="CVE-2026-48522-to-48526-fixed-in-2.13.0"),
        # Not a wrong JWT accepted: the key set fetched again for every unknown key id (test_identity.py).
        pytest.param("2.13.0", id="key-set-fetched-for-every-unknown-kid-until-2.14.0"),
    ],
)
def test_pyjwt_cannot_be_a_release_that_accepts_jwts_it_should_refuse(release: str) -> None:
    (pyjwt,) = [
        Requirement(line) for line in metadata.requires("mcp-secrets") or [] if line.startswith("pyjwt")
    ]

    assert not pyjwt.specifier.contains(release)
    assert pyjwt.specifier.contains("2.14.0")


def _requirement(name: str) -> Requirement:
    """mcp-secrets' requirement of ``name``, a runtime one or one of an extra's."""
    (requirement,) = [
        requirement
        for requirement in map(Requirement, metadata.requires("mcp-secrets") or [])
        if canonicalize_name(requirement.name) == canonicalize_name(name)
    ]
    return requirement


# Each the newest release that fails, and the oldest that works; `.ci/floors` runs the suite at the floors.
@pytest.mark.parametrize(
    ("name", "failing", "floor"),
    [
        pytest.param("pydantic-settings", "2.6.1", "2.7.0", id="pydantic-settings-NoDecode-from-2.7"),
        # Before 4.16 a failed SRV lookup dropped its DNS error: reported as a wrong URL (test_store.py).
        pytest.param("pymongo", "4.15.5", "4.16.0", id="pymongo-srv-lookup-error-keeps-its-cause-from-4.16"),
        # Before 4.12, no home gave "~/…" instead of an error: the wrong message (test_cli.py).
        pytest.param("platformdirs", "4.11.15", "4.12.0", id="platformdirs-raises-without-a-home-from-4.12"),
        # No older release installs with mcp 2.3 (anyio through httpx2): the suite never ran on one.
        pytest.param("pydantic", "2.11.10", "2.12.0", id="pydantic-2.12-as-mcp-requires"),
        pytest.param("anyio", "4.9.0", "4.10.0", id="anyio-4.10-as-mcp-requires"),
        # The test extra: test_crypto.py reads the vectors, .ci/run lints and type-checks with these.
        pytest.param("cryptography-vectors", "0.6.1", "0.7", id="vectors-open-with-a-mode-from-0.7"),
        pytest.param("ruff", "0.12.3", "0.12.4", id="ruff-check-passes-from-0.12.4"),
        pytest.param("mypy", "1.16.1", "1.17.0", id="mypy-passes-from-1.17"),
    ],
)
def test_a_requirement_excludes_the_releases_that_fail(name: str, failing: str, floor: str) -> None:
    requirement = _requirement(name)

    assert not requirement.specifier.contains(failing)
    assert requirement.specifier.contains(floor)


def _imported_top_level_modules(package: Path) -> set[str]:
    """Every top-level module a file of ``package`` imports, absolute imports only."""
    modules: set[str] = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules


def _providers() -> dict[str, list[str]]:
    """Which installed distributions hold each top-level module, read from their lists of files.

    ``metadata.packages_distributions()`` does this from 3.11 on; on 3.10 it reads only ``top_level.txt``,
    which wheels built by most backends no longer have.
    """
    providers: dict[str, list[str]] = {}
    for distribution in metadata.distributions():
        for file in distribution.files or []:
            top = file.parts[0]
            if top.endswith((".dist-info", ".data")) or top in {"..", "__pycache__"}:
                continue
            module = top.removesuffix(".py") if len(file.parts) == 1 else top
            providers.setdefault(module, [])
            if distribution.metadata["Name"] not in providers[module]:
                providers[module].append(distribution.metadata["Name"])
    return providers


def test_every_distribution_the_package_imports_is_a_requirement_of_its_own() -> None:
    # One that only comes through another's requirements can go with that one's next release.
    package = Path(mcp_secrets.__file__).resolve().parent
    providers = _providers()
    declared = {
        canonicalize_name(Requirement(line).name)
        for line in metadata.requires("mcp-secrets") or []
        if "extra ==" not in line
    }
    imported = _imported_top_level_modules(package) - set(sys.stdlib_module_names) - {"mcp_secrets"}

    undeclared = {
        module: providers.get(module)
        for module in imported
        if not {canonicalize_name(name) for name in providers.get(module, [])} & declared
    }
    assert undeclared == {}
    assert {"mcp", "starlette", "bson", "dns"} <= imported  # the walk found the imports at all


README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_documents_every_setting() -> None:
    readme = README.read_text(encoding="utf-8")

    undocumented = [name for name in Settings.model_fields if f"MCP_SECRETS_{name.upper()}" not in readme]

    assert undocumented == []


def _commands(parser: argparse.ArgumentParser, prefix: str = "mcp-secrets") -> list[str]:
    """Every leaf command line of ``parser``, as ``mcp-secrets token create``."""
    actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    if not actions:
        return [prefix]
    return [line for name, sub in actions[0].choices.items() for line in _commands(sub, f"{prefix} {name}")]


def test_the_readme_command_table_has_every_command() -> None:
    table = README.read_text(encoding="utf-8").split("## Command line", 1)[1].split("\n## ", 1)[0]

    commands = _commands(build_parser())
    missing = [command for command in commands if f"`{command}" not in table]

    assert "mcp-secrets prune-audit" in commands
    assert missing == []


_PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*")


@pytest.mark.parametrize(
    "row",
    [
        line.split("`")[1]
        for line in README.read_text(encoding="utf-8").split("## Command line", 1)[1].splitlines()
        if line.startswith("| `mcp-secrets ")
    ],
)
def test_a_command_table_row_reads_as_its_commands_usage_line(row: str) -> None:
    """Each positional and ``--option PLACEHOLDER`` a row shows is what the command's ``--help`` shows."""
    words = row.replace("\\|", "|").replace("[", " ").replace("]", " ").split()
    parsers = command_parsers(build_parser())
    command = " ".join(
        max((words[:end] for end in range(1, len(words) + 1) if " ".join(words[:end]) in parsers), key=len)
    )
    parser = parsers[command]
    rest = words[len(command.split()) :]
    usage = " ".join(parser.format_usage().split())

    positionals = list(itertools.takewhile(_PLACEHOLDER.fullmatch, rest))
    options = [
        f"{word} {after}"
        for word, after in itertools.pairwise(rest)
        if word.startswith("--") and _PLACEHOLDER.fullmatch(after)
    ]

    assert positionals == [action.metavar for action in parser._actions if not action.option_strings]
    assert [option for option in options if not re.search(rf"{re.escape(option)}\b", usage)] == []


def _json_block_after(marker: str) -> object:
    """The first ```json block of the README after ``marker``, parsed."""
    after = README.read_text(encoding="utf-8").split(marker, 1)[1]
    return json.loads(after.split("```json\n", 1)[1].split("```", 1)[0])


def test_the_readme_claude_desktop_http_config_is_the_one_the_first_start_prints() -> None:
    shown = _json_block_after("**Claude Desktop (HTTP server).**")

    assert shown == desktop_config("http://127.0.0.1:8000/mcp", "mcps_…")


def test_the_readme_claude_desktop_stdio_config_is_the_examples_without_its_user() -> None:
    shown = _json_block_after("**Claude Desktop (stdio).**")
    example = json.loads((README.parent / "examples" / "claude_desktop_config.json").read_text())

    del example["mcpServers"]["mcp-secrets"]["env"]
    assert shown == example


def test_the_readme_gateway_file_is_a_valid_gateway_configuration(tmp_path: Path) -> None:
    gateway_file = tmp_path / "gateway.json"
    gateway_file.write_text(json.dumps(_json_block_after("\n## Gateway\n")), encoding="utf-8")

    config = load_gateway_config(gateway_file)

    assert config.servers["github"].required == {"GITHUB_TOKEN"}
    assert config.servers["linear"].required == {"LINEAR_API_KEY"}


def test_every_public_name_is_there_when_asked_for() -> None:
    # The package imports them when first used (see mcp_secrets.launch): each must still be found.
    for name in mcp_secrets.__all__:
        assert getattr(mcp_secrets, name) is not None
    with pytest.raises(AttributeError):
        _ = mcp_secrets.no_such_name  # type: ignore[attr-defined]
