"""Active-active router replicas: what they tell each other and how it travels."""

from llmlb_fast.replicas.messages import Batch, decode, encode
from llmlb_fast.replicas.sync import ReplicaSync, SyncCounters

__all__ = ["Batch", "ReplicaSync", "SyncCounters", "decode", "encode"]
