"""What may reach the network: the Hugging Face Hub only when downloads are allowed, telemetry never.

icon2-lens contacts the network in one place of its own, :mod:`icon2_lens._cache` (a wheel
fetched once from the package index, on purpose). The libraries it drives would do more:
``huggingface_hub`` looks model names up on the Hub, and TRL's trainers send a telemetry ping
through ``huggingface_hub.utils.send_telemetry`` when one is built. :func:`apply_network_defaults`
turns both off through the variables those libraries read, each set only where the user has not
set it (a value the user exported, or changed since, always wins):

* ``HF_HUB_DISABLE_TELEMETRY=1`` always (``send_telemetry`` returns at once);
* ``HF_HUB_OFFLINE=1`` unless downloads are allowed (``--allow-download`` on the command line, or
  ``ICON2_LENS_ALLOW_DOWNLOAD=1``), so the Hub is read from the local cache only.

``huggingface_hub`` reads these variables once, when it is imported; if it was imported before
(a notebook that imported ``transformers`` first), its module constants are updated to match.

May import: nothing of the package (a low-level module).

Example:
    >>> import os
    >>> downloads_allowed(False), downloads_allowed(True)
    (False, True)
    >>> apply_network_defaults(allow_download=False)
    False
    >>> "HF_HUB_DISABLE_TELEMETRY" in os.environ and "HF_HUB_OFFLINE" in os.environ
    True
"""

import logging
import os
import sys

__all__ = ["ALLOW_DOWNLOAD_ENV", "apply_network_defaults", "downloads_allowed"]

logger = logging.getLogger(__name__)

#: Set to 1 (or true/yes/on) to let hub ids be downloaded; the CLI's ``--allow-download`` sets it.
ALLOW_DOWNLOAD_ENV = "ICON2_LENS_ALLOW_DOWNLOAD"

_TRUE = {"1", "true", "yes", "on"}
# Variable -> the value this module gave it. Only a variable that still holds that value is
# changed or removed again; anything else is the user's.
_OURS: dict[str, str] = {}


def _is_true(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def downloads_allowed(allow_download: bool | None = None) -> bool:
    """Whether hub ids may be downloaded: ``allow_download`` if given, else ``$ICON2_LENS_ALLOW_DOWNLOAD``."""
    if allow_download is not None:
        return bool(allow_download)
    return _is_true(os.environ.get(ALLOW_DOWNLOAD_ENV))


def _is_ours(name: str) -> bool:
    return name in _OURS and os.environ.get(name) == _OURS[name]


def _set_default(name: str, value: str) -> bool:
    if name in os.environ and not _is_ours(name):
        _OURS.pop(name, None)
        return False  # the user's own setting wins
    changed = os.environ.get(name) != value
    os.environ[name] = value
    _OURS[name] = value
    return changed


def _drop_default(name: str) -> bool:
    if not _is_ours(name):
        return False
    del _OURS[name], os.environ[name]
    return True


def _sync_hub_constants() -> None:
    """Re-read the two variables into an already imported ``huggingface_hub.constants``."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is None:
        return  # it reads the environment itself when it is imported
    env = os.environ.get
    constants.HF_HUB_OFFLINE = _is_true(env("HF_HUB_OFFLINE") or env("TRANSFORMERS_OFFLINE"))
    constants.HF_HUB_DISABLE_TELEMETRY = any(
        _is_true(env(n)) for n in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK")
    )


def apply_network_defaults(allow_download: bool | None = None) -> bool:
    """Turn off Hub telemetry, and the Hub itself unless downloads are allowed.

    Called by every entry point that may load a model or build a trainer (the CLI,
    :func:`icon2_lens.model.load.load_model`, :func:`icon2_lens.dpo.trainer.make_dpo_trainer`), so
    it runs before those libraries are imported or used. A variable the user set is never changed.

    Args:
        allow_download: Allow hub downloads (``None``: ``$ICON2_LENS_ALLOW_DOWNLOAD``).

    Returns:
        Whether downloads are allowed.
    """
    allowed = downloads_allowed(allow_download)
    changed = _set_default("HF_HUB_DISABLE_TELEMETRY", "1")
    if allowed:
        changed |= _drop_default("HF_HUB_OFFLINE")
    else:
        changed |= _set_default("HF_HUB_OFFLINE", "1")
    if changed:
        _sync_hub_constants()
        logger.debug(
            "network defaults: telemetry off, hub %s", "online" if allowed else "local cache only"
        )
    return allowed
