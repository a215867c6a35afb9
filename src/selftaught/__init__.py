"""selftaught: STaR, the Self-Taught Reasoner (Zelikman et al., NeurIPS 2022)."""

__version__ = "0.1.0"
