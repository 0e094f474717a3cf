"""Chaos suite: real Stepline processes under kills, database stalls and cut connections,
checked from outside by an auditor (see docs/chaos.md)."""
