"""`compile_modules`: torch.compile on a whole model or on some of its blocks, in place.

`nn.Module.compile` compiles a module's forward without wrapping the module, so parameter names, checkpoints and
`state_dict` keys are those of the eager model, and a run can be resumed with or without compilation.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..schema import ConfigError

__all__ = ["compile_modules", "find_submodule"]


def find_submodule(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """(path, module) of the submodule `name`: the path as given ("e2evlp.encoder"), else the shortest path that
    ends with it ("encoder" in a task model is its `e2evlp.encoder`).

    Raises:
        ConfigError: no submodule has that name (the model's top-level children are listed).
    """
    try:
        return name, model.get_submodule(name)
    except AttributeError:
        pass
    matches = sorted((path for path, _ in model.named_modules() if path.endswith("." + name)), key=len)
    if not matches:
        children = [child for child, _ in model.named_children()]
        raise ConfigError(f"compile_modules: {type(model).__name__} has no submodule {name!r}; its children are "
                          f"{children} (a dotted path such as 'e2evlp.encoder' also works)")
    return matches[0], model.get_submodule(matches[0])


def compile_modules(model: nn.Module, names: Sequence[str], *, dynamic: bool | None = None,
                    backend: str = "inductor") -> list[str]:
    """Compile `model` in place with `torch.compile`: "*" compiles the whole model, any other name the submodule
    `find_submodule` finds (e.g. ["encoder", "decoder"]: the transformer side of E2E-VLP, whose shapes vary
    less than the trunk's). Returns the compiled paths ("" for the whole model).

    dynamic: torch.compile's; None lets torch recompile once with dynamic sizes when a size changes (padded
        text lengths and multi-scale images do), True starts dynamic, False specialises on every size.
    """
    compiled = []
    for name in names:
        path, module = ("", model) if name == "*" else find_submodule(model, name)
        module.compile(dynamic=dynamic, backend=backend)
        compiled.append(path)
    return compiled
