"""The gpu-runners policy pack: `pulumi preview --policy-pack policy`. Rules live in rules.py."""

from pulumi_policy import PolicyPack
from rules import POLICIES

PolicyPack(name="gpu-runners", policies=POLICIES)
