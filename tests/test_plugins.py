"""Hydra finds resattn's two plugins the way it finds any: by scanning the hydra_plugins namespace package."""

from hydra.core.plugins import Plugins
from hydra.plugins.launcher import Launcher
from hydra.plugins.sweeper import Sweeper


def test_hydra_discovers_the_resattn_sweeper_and_the_fused_launcher():
    sweepers = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Sweeper)}
    launchers = {f"{p.__module__}.{p.__name__}" for p in Plugins.instance().discover(Launcher)}
    assert "hydra_plugins.resattn_sweeper.resattn_sweeper.ResattnSweeper" in sweepers
    assert "hydra_plugins.resattn_fused_launcher.fused_launcher.FusedLauncher" in launchers
