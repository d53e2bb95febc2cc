"""Both command lines (`dnas search`, `python -m search.run`) reach every SearchConfig setting with its real
default: what the Python API gets by default is what the CLI gets by default, and every setting changed on the
command line arrives changed."""

import json
import subprocess
import sys
from dataclasses import fields

from typer.testing import CliRunner

from dnas.cli import app
from search.dnas.cli_options import config_options, config_to_argv
from search.dnas.config import SearchConfig
from search.dnas.run import build_parser, config_from_namespace

# A value different from the default for every setting (and a valid config as a whole).
CHANGED = {
    "epochs": 7, "warmup_epochs": 3, "batch_size": 17, "mode": "hard", "lr_w": 0.037, "momentum": 0.8,
    "wd_w": 3e-5, "scale_lr": False, "lr_theta": 0.02, "wd_theta": 1e-3, "tau0": 4.5, "tau_decay": 0.05,
    "alpha": 0.3, "beta": 1.7, "normalize_w_loss": False, "target_latency_ms": (2.5, 3.0), "target_mode": "band",
    "target_tolerance": 0.05, "beta_gain": 2.0, "beta_range": (0.5, 9.0), "device_mode": "all-devices",
    "samples": 2, "seed": 11,
    "data_seed": 4, "classes": 5, "workers": 1, "steps_per_epoch": 9, "validate": False,
    "compute_device": "cpu", "bf16": True, "threads": 3, "checkpoint_every": 50, "tensorboard": False,
}  # fmt: skip


def _flags(values: dict) -> list[str]:
    return config_to_argv(SearchConfig(**values))


def test_every_setting_has_a_command_line_option():
    assert {o.name for o in config_options()} == {f.name for f in fields(SearchConfig)} == set(CHANGED)
    for name, value in CHANGED.items():
        assert getattr(SearchConfig(), name) != value, name


def _typer_config(argv: list[str]) -> dict:
    result = CliRunner().invoke(app, ["search", "--print-config", *argv])
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def _as_json(cfg: SearchConfig) -> dict:
    return json.loads(json.dumps(cfg.to_dict()))


def test_dnas_search_defaults_are_the_python_defaults():
    # normalize_w_loss is on in both (it was off on the command line), and so is every other boolean default.
    assert _typer_config([]) == _as_json(SearchConfig())
    assert config_from_namespace(build_parser().parse_args([])) == SearchConfig()


def test_every_changed_setting_reaches_both_command_lines():
    wanted = SearchConfig(**CHANGED)
    assert _typer_config(_flags(CHANGED)) == _as_json(wanted)
    assert config_from_namespace(build_parser().parse_args(_flags(CHANGED))) == wanted
    # Booleans are --x / --no-x both ways.
    assert _typer_config(["--no-normalize-w-loss"])["normalize_w_loss"] is False
    assert _typer_config(["--bf16"])["bf16"] is True


def test_the_process_dnas_search_starts_parses_the_same_config():
    """What torchrun runs: `python -m search.run` with the argv `dnas search` builds."""
    proc = subprocess.run([sys.executable, "-m", "search.run", "--print-config", *_flags(CHANGED)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == _as_json(SearchConfig(**CHANGED))


def test_settings_from_the_environment_and_refusals_are_one_line():
    result = CliRunner().invoke(app, ["search", "--print-config"], env={"DNAS_SEARCH_EPOCHS": "12"})
    assert json.loads(result.output.strip().splitlines()[-1])["epochs"] == 12
    bad = subprocess.run([sys.executable, "-m", "dnas", "search", "--out", "x", "--epochs", "5",
                          "--warmup-epochs", "5"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == [
        "error: warmup_epochs (5) must be below epochs (5): theta only trains after the warm-up, so this search "
        "would train no theta and report its uniform start"
    ]
