"""The models a training job trains, seen member-first: one plain module, or several stacked as one.

Both kinds answer the same calls: `members(x)` gives logits (members, batch, classes), each member on its own
batch x[m] (or all on one batch, `shared=True`); `state_dict(m)`, `load_state_dict(m, state)`, `module(m)`,
`lambdas(m)`, `momentum(optimizer, m)`, `load_momentum(optimizer, m, buffers)`; `params` are the tensors the
optimizer steps and `template` is one member's module (the names and shapes of its parameters).

`Single` is an ordinary run: the module itself, no vmap, channels_last kept. `Stacked` is a fused job: member
m's parameters and buffers are slice m of stacked tensors (member first), so one forward (torch.func.vmap over
functional_call), one backward and one optimizer step train them all, each with its own weights, BatchNorm
statistics and momentum: nothing mixes across the member dimension (a grouped convolution per member,
per-member normalisation, an elementwise optimizer).
"""

import copy

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

# Keys in which the members of one fused job may differ: they change the initial weights, not the network,
# the data or the schedule (per-member learning rates would need an optimizer of our own: not offered).
FUSABLE_KEYS = ("seed", "pattern.lam_init")


def fusion_key(cfg: DictConfig) -> str:
    """Equal for two configs exactly when their runs can train as members of one fused job."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    for key in FUSABLE_KEYS:
        *path, leaf = key.split(".")
        node = config
        for part in path:
            node = node.get(part, {})
        node.pop(leaf, None)
    return OmegaConf.to_yaml(OmegaConf.create(config))


class Members:
    """What both kinds share: member-first views of every parameter and buffer (`tensors`)."""

    n: int
    template: nn.Module
    params: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]

    def member_first(self, t: torch.Tensor) -> torch.Tensor:
        """A tensor shaped like `params` seen with the member dimension first."""
        raise NotImplementedError

    def train(self, mode: bool = True) -> None:
        self.template.train(mode)

    @property
    def training(self) -> bool:
        return self.template.training

    def state_dict(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's weights, named as its module's state_dict names them."""
        return {k: v[m].detach().clone() for k, v in self.tensors.items()}

    @torch.no_grad()
    def load_state_dict(self, m: int, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.tensors) - set(state)
        unexpected = set(state) - set(self.tensors)
        if missing or unexpected:
            raise KeyError(f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
        for k, v in state.items():
            self.tensors[k][m].copy_(v)

    def lambdas(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's λ per controlled block (0-d, or (C,) per channel), as the module's lambdas() names them."""
        return {
            k.removesuffix(".lam_logit"): torch.sigmoid(v[m].detach())
            for k, v in self.tensors.items()
            if k.endswith("lam_logit")
        }

    def momentum(self, optimizer: torch.optim.Optimizer, m: int) -> dict[str, torch.Tensor]:
        """Member m's SGD momentum buffers by parameter name (the steps taken so far leave them; none before)."""
        out = {}
        for name, p in self.params.items():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[name] = self.member_first(buf)[m].detach().clone()
        return out

    @torch.no_grad()
    def load_momentum(self, optimizer: torch.optim.Optimizer, m: int, buffers: dict[str, torch.Tensor]) -> None:
        for name, value in buffers.items():
            p = self.params[name]
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:  # zeros: SGD's first step then gives exactly the gradient
                state["momentum_buffer"] = torch.zeros_like(p)
            self.member_first(state["momentum_buffer"])[m].copy_(value)


class Single(Members):
    """One model: the module itself."""

    def __init__(self, model: nn.Module):
        self.n, self.template = 1, model
        self.params = dict(model.named_parameters())
        # member-first views of the module's own tensors: writes through them reach the module
        self.tensors = {k: v.unsqueeze(0) for k, v in {**self.params, **dict(model.named_buffers())}.items()}
        self._forward = model

    def member_first(self, t: torch.Tensor) -> torch.Tensor:
        return t.unsqueeze(0)

    def compile(self) -> None:
        # A fresh compile cache for each run: the jobs of a multirun share one process, and once one function
        # has been compiled for recompile_limit (8) models, dynamo silently runs every later job uncompiled.
        torch.compiler.reset()
        self._forward = torch.compile(self.template)

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        return self._forward(x if shared else x[0]).unsqueeze(0)

    def module(self, m: int) -> nn.Module:
        return self.template


class Stacked(Members):
    """Several models of one architecture as one: vmap over stacked weights."""

    def __init__(self, models: list[nn.Module]):
        self.n = len(models)
        self.params, self._buffers = stack_module_state(models)
        self.tensors = {**self.params, **self._buffers}
        self.template = copy.deepcopy(models[0])  # a shell to load one member into (attention maps)
        self._stateless = copy.deepcopy(models[0]).to("meta")
        self._calls = self._make_calls(lambda f: f)

    def member_first(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def _one(self, params, buffers, x):
        return functional_call(self._stateless, (params, buffers), (x,))

    def _make_calls(self, wrap) -> dict:
        """shared -> the function giving every member's logits: on its own batch, or on one batch for all."""
        return {
            shared: wrap(vmap(self._one, in_dims=(0, 0, None if shared else 0), randomness="different"))
            for shared in (False, True)
        }

    def compile(self) -> None:
        torch.compiler.reset()  # as Single.compile
        self._calls = self._make_calls(torch.compile)

    def __call__(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        return self._calls[shared](self.params, self._buffers, x)

    def train(self, mode: bool = True) -> None:
        super().train(mode)
        self._stateless.train(mode)

    def module(self, m: int) -> nn.Module:
        """A module holding member m's weights (for attention maps)."""
        self.template.load_state_dict(self.state_dict(m))
        self.template.train(self.training)
        return self.template


def stack(models: list[nn.Module]) -> Members:
    """The models as one job's members: the plain module for one, stacked for several."""
    return Single(models[0]) if len(models) == 1 else Stacked(models)
