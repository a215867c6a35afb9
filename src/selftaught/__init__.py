"""selftaught: STaR, the Self-Taught Reasoner (Zelikman et al., NeurIPS 2022).

From Python::

    import selftaught

    config = selftaught.STaRConfig(loop={"iterations": 2}, output_dir="runs/mine")
    result = selftaught.STaR(config, train_data=train, test_data=test).run()

See ``selftaught.api`` for the arguments, and ``selftaught run --help`` for every config key.
"""

__version__ = "0.1.0"

from selftaught.allocator import tune_allocator  # noqa: E402
from selftaught.api import STaR, STaRConfig, STaRResult  # noqa: E402

__all__ = ["STaR", "STaRConfig", "STaRResult", "tune_allocator", "__version__"]
