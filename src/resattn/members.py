"""Several models of one architecture trained as one: the members of a fused job.

Member m's parameters and buffers are slice m of stacked tensors (member first), so one forward
(torch.func.vmap over functional_call), one backward and one optimizer step train them all, each
with its own weights, BatchNorm statistics and momentum: nothing mixes across the member dimension
(a grouped convolution per member, per-member normalisation, an elementwise optimizer).

One member is the plain module itself (no vmap, channels_last kept), seen through the same
interface: an unfused run is a run of one member.
"""

import copy

from omegaconf import DictConfig, OmegaConf

import torch
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
    def __init__(self, models: list[nn.Module]):
        self.n = len(models)
        self.template = models[0]  # the module itself for one member; for several, a shell to load one into
        if self.n == 1:
            self.params = dict(self.template.named_parameters())
            buffers = dict(self.template.named_buffers())
            # member-first views of the module's own tensors: writes through them reach the module
            self.tensors = {k: v.unsqueeze(0) for k, v in {**self.params, **buffers}.items()}
        else:
            self.params, buffers = stack_module_state(models)
            self.tensors = {**self.params, **buffers}
            self.template = copy.deepcopy(models[0])
        self._buffers = buffers
        self.member_dims = 0 if self.n == 1 else 1
        self._stateless = copy.deepcopy(self.template).to("meta") if self.n > 1 else None
        self._calls = self._make_calls(compiled=False)

    def _one(self, params, buffers, x):
        return functional_call(self._stateless, (params, buffers), (x,))

    def _make_calls(self, compiled: bool) -> dict:
        """shared -> the function giving every member's logits: on its own batch, or on one batch for all."""
        wrap = torch.compile if compiled else (lambda f: f)
        if self.n == 1:
            one = wrap(self.template)
            return {False: lambda x: one(x[0]).unsqueeze(0), True: lambda x: one(x).unsqueeze(0)}
        return {shared: wrap(vmap(self._one, in_dims=(0, 0, None if shared else 0), randomness="different"))
                for shared in (False, True)}

    def compile(self) -> None:
        # A fresh compile cache for each run: the jobs of a multirun share one process, and once one function
        # has been compiled for recompile_limit (8) models, dynamo silently runs every later job uncompiled.
        torch.compiler.reset()
        self._calls = self._make_calls(compiled=True)

    def forward(self, x: torch.Tensor, shared: bool = False) -> torch.Tensor:
        """Logits (members, batch, classes) of each member on its own batch x[m], or on the same x when `shared`."""
        if self.n == 1:
            return self._calls[shared](x)
        return self._calls[shared](self.params, self._buffers, x)

    __call__ = forward

    def train(self, mode: bool = True) -> None:
        self.template.train(mode)
        if self._stateless is not None:
            self._stateless.train(mode)

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

    def module(self, m: int) -> nn.Module:
        """A module holding member m's weights (for attention maps): the module itself for one member."""
        if self.n > 1:
            self.template.load_state_dict(self.state_dict(m))
            self.template.train(self.training)
        return self.template

    def lambdas(self, m: int) -> dict[str, torch.Tensor]:
        """Member m's λ per controlled block (0-d, or (C,) per channel), as the module's lambdas() names them."""
        return {k.removesuffix(".lam_logit"): torch.sigmoid(v[m].detach()) for k, v in self.tensors.items()
                if k.endswith("lam_logit")}

    def momentum(self, optimizer: torch.optim.Optimizer, m: int) -> dict[str, torch.Tensor]:
        """Member m's SGD momentum buffers by parameter name (the steps taken so far leave them; none before)."""
        out = {}
        for name, p in self.params.items():
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[name] = (buf.unsqueeze(0) if self.n == 1 else buf)[m].detach().clone()
        return out

    @torch.no_grad()
    def load_momentum(self, optimizer: torch.optim.Optimizer, m: int, buffers: dict[str, torch.Tensor]) -> None:
        for name, value in buffers.items():
            p = self.params[name]
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:  # zeros: SGD's first step then gives exactly the gradient
                state["momentum_buffer"] = torch.zeros_like(p)
            (state["momentum_buffer"].unsqueeze(0) if self.n == 1 else state["momentum_buffer"])[m].copy_(value)
