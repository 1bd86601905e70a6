"""guard.eval: the GUARD evaluation protocol as a command, `python -m guard.eval` (see __main__.py).

Subcommands, one per file: rewards.py (a reward model's audit on preference pairs), parity.py (a policy's
reward parity gap between categories), diversity.py (semantic diversity of a policy's responses), bias.py
(a reward model's stereotype bias on CrowS-Pairs or StereoSet). common.py holds what they share.
"""
