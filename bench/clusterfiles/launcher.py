"""Ray cluster-launcher YAMLs (a `provider` or `cluster_name`), checked the way `ray up` checks them
before it talks to any cloud: Ray's own schema (ray/autoscaler/ray-schema.json) on the file as
written, then Ray's `prepare_config` (merge with the provider's defaults.yaml, the on-prem rewrite of
the `local` provider) and `validate_config` (schema again plus the cross-field rules). Neither
contacts a cloud: what does (`bootstrap_config`: IAM roles, subnets, key pairs) is the part of
`ray up` that runs after these and is deliberately not called.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import pathlib
import re

from bench.clusterfiles import invalid
from bench.errors import UserError
from bench.schema import error_problems

_PROVIDER_FIELDS = {"head_ip", "worker_ips", "coordinator_address", "type", "region", "project_id"}


def _schema_error(path: pathlib.Path, error) -> UserError:
    problem = error_problems(error)[0]
    return invalid(path, problem.field, problem.message)


def _strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # Ray's abort lines look like "2026-.. PANIC config.py:73 -- message"
    return re.sub(r"^.*? -- ", "", lines[-1]) if lines else ""


def _field_in(message: str) -> str:
    """The field a Ray message is about: its first `quoted` name (Ray quotes them that way)."""
    match = re.search(r"`([A-Za-z_][A-Za-z0-9_.]*)`", message)
    if not match:
        return ""
    name = match.group(1)
    return f"provider.{name}" if name in _PROVIDER_FIELDS else name


def validate(path: pathlib.Path, config: dict) -> str:
    """A one-line summary of a valid launcher config, or UserError naming the file and the field."""
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema_path = pathlib.Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    # 1. The file as written, so the error names the user's field (not one filled in by defaults).
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        raise _schema_error(path, errors[0])
    provider = config["provider"].get("type")
    if provider == "local" and "coordinator_address" not in config["provider"]:
        for field in ("head_ip", "worker_ips"):
            if field not in config["provider"]:
                raise invalid(path, f"provider.{field}",
                              "required by the local provider (use worker_ips: [] for a single machine)")
    # 2. Ray's own preparation and validation, exactly as `ray up` runs them before bootstrapping.
    #    Ray's `local` provider reports problems through cli_logger.abort (SystemExit/click).
    ray_util_logger = logging.getLogger("ray.autoscaler._private.util")
    previous_level = ray_util_logger.level
    ray_util_logger.setLevel(logging.WARNING)  # "setting max workers for ..." is not news
    chatter = io.StringIO()  # Ray's cli_logger prints warnings/aborts; we report one line instead
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            prepared = prepare_config(copy.deepcopy(config))
            validate_config(prepared)
    except jsonschema.ValidationError as exc:
        raise _schema_error(path, exc) from None
    except NotImplementedError as exc:
        raise invalid(path, "provider.type", str(exc)) from None
    except (SystemExit, Exception) as exc:  # noqa: BLE001 - cli_logger.abort raises click/SystemExit
        detail = _one_line(str(exc)) or _one_line(_strip_ansi(chatter.getvalue())) or type(exc).__name__
        raise invalid(path, _field_in(detail), detail) from None
    finally:
        ray_util_logger.setLevel(previous_level)
    node_types = prepared.get("available_node_types", {})
    if provider == "local":
        workers = len(config["provider"].get("worker_ips") or [])
        return f"{path}: valid Ray cluster config (provider local, head + {workers} worker IPs)"
    return f"{path}: valid Ray cluster config (provider {provider}, {len(node_types)} node types)"
