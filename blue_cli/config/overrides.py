"""Check command-line overrides before Hydra runs, so mistakes are one clear line.

Hydra's own errors are multi-line (and a failure inside a sweep shows up only
after the sweep folder exists); composing every value once here catches unknown
group choices, unknown keys and wrong types before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException
from omegaconf import DictConfig, OmegaConf

from blue_cli.config.schema import GROUPS, check_run_config, conf_dir, group_choices, register_configs
from blue_cli.errors import ConfigError

# Hydra flags that take a value; everything else starting with "-" is a switch.
VALUE_FLAGS = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "-i",
    "--experimental-rerun",
    "--shell-completion",
    "-sc",
}


def split_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """(hydra flags with their values, plain overrides)."""
    flags, overrides = [], []
    it = iter(args)
    for arg in it:
        if arg.startswith("-") and not re.match(r"^[+~]", arg):
            flags.append(arg)
            if arg in VALUE_FLAGS and "=" not in arg:
                nxt = next(it, None)
                if nxt is not None:
                    flags.append(nxt)
        else:
            overrides.append(arg)
    return flags, overrides


def _expand(overrides: Sequence[str]) -> list[list[str]]:
    """One override list per sweep value (linear, not the full product): each value is checked once."""
    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except Exception as exc:  # hydra raises OverrideParseException with a multi-line text
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {str(exc).splitlines()[0]}") from None
    base, sweeps = [], []
    for ov in parsed:
        key = ov.get_key_element()
        if key.startswith("hydra"):
            continue
        if ov.is_sweep_override():
            values = list(ov.sweep_string_iterator())
            base.append(f"{key}={values[0]}")
            sweeps.append((len(base) - 1, key, values))
        else:
            base.append(ov.input_line)
    combos = [base]
    for idx, key, values in sweeps:
        for value in values[1:]:
            combo = list(base)
            combo[idx] = f"{key}={value}"
            combos.append(combo)
    return combos


def _friendly(exc: Exception, overrides: Sequence[str]) -> str:
    text = str(exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing and (missing.group(1) in GROUPS or (conf_dir() / missing.group(1)).is_dir()):
        group, value = missing.groups()
        return f"unknown {group} '{value}' (choose: {', '.join(group_choices(group))})"
    over = re.search(r"Could not override '([^']+)'", text)
    if over:
        group = over.group(1)
        if group not in GROUPS and (conf_dir() / group).is_dir():
            choices = ", ".join(group_choices(group))
            return f"'{group}' is not in the defaults list: add it with +{group}=... (choose: {choices})"
        return _unknown_key(group)
    merge = re.search(r"Error merging override (\S+)", text)
    if merge:
        cause = exc.__cause__
        detail = str(cause).splitlines()[0] if cause else "invalid value"
        key = merge.group(1).split("=", 1)[0]
        if "not in struct" in str(cause) or "Key '" in detail and "not in" in detail:
            return _unknown_key(key)
        return f"bad value in '{merge.group(1)}': {detail}"
    return text.strip().splitlines()[0]


def _unknown_key(key: str) -> str:
    with initialize_config_dir(str(conf_dir()), version_base="1.3"):
        cfg = compose("config")
    if key.startswith("per_method."):  # an open mapping: its keys are added, not overridden
        return f"unknown config key '{key}': per_method's entries are new keys, write +{key}=..."
    parent, _, leaf = key.lstrip("+~").rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if isinstance(node, DictConfig):
        return (
            f"unknown config key '{key}' (valid keys{' under ' + parent if parent else ''}: {', '.join(node.keys())})"
        )
    return f"unknown config key '{key}'"


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """Compose conf/config.yaml with ``overrides`` (no sweeps) and check its values."""
    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except ConfigError:
        raise
    except Exception as exc:
        GlobalHydra.instance().clear()
        raise ConfigError(_friendly(exc, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    check_run_config(cfg, announce=False)
    return cfg


def validate_overrides(args: Sequence[str]) -> list[DictConfig]:
    """Raise ConfigError for the first override (or sweep value) that would not compose.

    Returns the composed configs: the run's, or one per sweep value (not the product).
    """
    _, overrides = split_args(args)
    return [compose_config(combo) for combo in _expand(overrides)]


# Flags after which Hydra prints something and runs no job.
PRINT_FLAGS = {"--cfg", "-c", "--info", "-i", "--shell-completion", "-sc", "--help", "-h", "--hydra-help", "--version"}


def runs_no_job(args: Sequence[str]) -> bool:
    """Whether Hydra would only print (config, info, help) for these arguments."""
    flags, _ = split_args(args)
    return any(flag.split("=", 1)[0] in PRINT_FLAGS for flag in flags)


def is_multirun(args: Sequence[str]) -> bool:
    flags, overrides = split_args(args)
    return any(f in ("-m", "--multirun") for f in flags) or any(
        o.replace(" ", "") == "hydra.mode=MULTIRUN" for o in overrides
    )


def explicit_run_dir(args: Sequence[str]) -> str | None:
    """The value of a ``hydra.run.dir=`` override (the last one), or None.

    A value with an interpolation (``${...}``) is returned as None too: only Hydra
    resolves those, so such a folder is checked inside the job instead.
    """
    _, overrides = split_args(args)
    found = None
    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException:
        return None
    for ov in parsed:
        if ov.get_key_element() == "hydra.run.dir" and not ov.is_delete():
            found = str(ov.value())
    if found is None or "${" in found:
        return None
    return found
