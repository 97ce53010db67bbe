"""Which modules a compressed-tensors ``targets`` / ``ignore`` list covers, matched
as compressed-tensors 0.14.0.1 matches them when it writes a checkpoint."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping


def _name_matches(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def target_matcher(
    targets: Iterable[str] | None,
    ignore: Iterable[str] | None = None,
    module_classes: Mapping[str, Iterable[str]] | None = None,
) -> Callable[[str], bool]:
    """A ``targets`` predicate for :func:`compress_state_dict` that matches module
    names the way 0.14.0.1's ``match_named_modules`` does: an entry matches a module
    if it equals its name, if it is ``re:<regex>`` and ``re.match`` succeeds, or if
    it is one of the module's class names (``module_classes[name]``, e.g.
    ``("Linear", "Module")``; ``"Linear"`` also matches ``"LinearBase"``). Without
    ``module_classes`` only name targets can match."""
    targets = list(targets or ())
    ignore = list(ignore or ())
    classes = {k: frozenset(v) for k, v in (module_classes or {}).items()}

    def matches(name: str, target: str) -> bool:
        cls = classes.get(name, frozenset())
        return (
            _name_matches(name, target)
            or target in cls
            or (target == "Linear" and "LinearBase" in cls)
        )

    def predicate(module: str) -> bool:
        return any(matches(module, t) for t in targets) and not any(matches(module, i) for i in ignore)

    return predicate
