"""shim.toml: lookup order, and validation with one line naming the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from shim.site.config import BUNDLED_CONF_DIR, ConfigError, find_conf_dir, load_site_config


def conf_with(tmp_path: Path, text: str) -> str:
    (tmp_path / "shim.toml").write_text(text)
    return str(tmp_path)


def test_bundled_default_is_valid_and_lenient():
    site = load_site_config(str(BUNDLED_CONF_DIR))
    assert site.refusal == "warn" and site.policy() == {}
    assert "/scratch" in site.binds


def test_lookup_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "shim.toml").write_text("")
    monkeypatch.setenv("SHIMRUN_CONF", str(b))
    assert find_conf_dir(str(a)) == a          # --conf first
    assert find_conf_dir(None) == b            # then SHIMRUN_CONF
    monkeypatch.setenv("SHIMRUN_CONF", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="no shim.toml in configuration directory"):
        find_conf_dir(None)


def test_policy_is_read(tmp_path):
    site = load_site_config(conf_with(tmp_path, '[policy]\nrefusal = "error"\n[policy.codes]\n'
                                                'ARCH-EMULATED = "error"\nVIRTUALIZED = "ignore"\n'
                                                'ISA-UNDERUSED = "info"\n'))
    assert site.refusal == "error"
    assert site.policy() == {"ARCH-EMULATED": "error", "VIRTUALIZED": "ignore", "ISA-UNDERUSED": "info"}


@pytest.mark.parametrize(("text", "words"), [
    ('[policy]\nrefusal = "maybe"\n', "policy.refusal = 'maybe' is not one of warn, error"),
    ('[policy.codes]\nGPU-ABSENT = "loud"\n', "'loud' is not one of ignore, info, warn, error"),
    ('[policy.codes]\ngpu_absent = "warn"\n', "'gpu_absent' is not a diagnostic code shim emits (did you mean"),
    ('[policy.codes]\nGPU-ABSNET = "warn"\n', "did you mean GPU-ABSENT?"),
    ('[policy.codes]\nNO-SUCH-THING = "warn"\n', "'NO-SUCH-THING' is not a diagnostic code shim emits"),
    ('[policy]\nrefusals = "warn"\n', "unknown key policy.refusals"),
    ('[polcy]\n', "unknown table [polcy]"),
    ('[launch]\nbinds = "/scratch"\n', "launch.binds must be a list"),
    ("[launch\n", "fix the TOML syntax"),
])
def test_bad_config_is_one_clear_line(tmp_path, text, words):
    with pytest.raises(ConfigError) as e:
        load_site_config(conf_with(tmp_path, text))
    line = f"{e.value.message} ({e.value.hint})"
    assert words in line and str(tmp_path / "shim.toml") in line and "\n" not in line
