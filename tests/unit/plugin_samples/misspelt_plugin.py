"""A plugin whose engine hook is misspelt (`dynamo_engnes`): start-up must refuse it."""

from dynamo_core import hookimpl
from dynamo_core.engines.base import EngineSpec


@hookimpl
def dynamo_engnes():
    return [EngineSpec("never-seen", lambda context: None, "misspelt")]
