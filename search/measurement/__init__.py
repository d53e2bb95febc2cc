"""How a measurement is taken and summarised: interleaved rounds and their estimator.

Shared by every runner (pushed to devices beside the runner, so standard library only) and by every check that
compares measurements (fidelity's noise ceiling), so both sides use one estimator.
"""
