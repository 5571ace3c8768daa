"""Run and test governed agents with no network and no keys.

* an offline LiteLLM provider (``offline/<model>``) that stands in for real
  models: their tokenizer, their price, realistic latency, recorded answers;
* an OpenAI-compatible stub server on 127.0.0.1 for tests of real HTTP paths;
* an OTLP/HTTP receiver that decodes the spans it is sent;
* small public prompt sets (HotpotQA, GSM8K, RouterBench) with their licences.

Nothing here imports LiteLLM until a function that needs it is called.
"""

from governor.testing._offline import (
    ENV_OFFLINE_SPEED,
    ENV_PROVIDER,
    LatencyProfile,
    OfflineAnswer,
    OfflineCall,
    OfflineProvider,
    Responder,
    install_offline_provider,
    latency_profile,
    offline_model,
    stands_in_for,
    uninstall_offline_provider,
)
from governor.testing._otlp import OtlpReceiver, ReceivedSpan
from governor.testing._recorded import ROUTERBENCH_MODELS, load_prompts, recorded_answer
from governor.testing._stub_server import StubBehaviour, StubRequest, StubServer

__all__ = [
    "ENV_OFFLINE_SPEED",
    "ENV_PROVIDER",
    "ROUTERBENCH_MODELS",
    "LatencyProfile",
    "OfflineAnswer",
    "OfflineCall",
    "OfflineProvider",
    "OtlpReceiver",
    "ReceivedSpan",
    "Responder",
    "StubBehaviour",
    "StubRequest",
    "StubServer",
    "install_offline_provider",
    "latency_profile",
    "load_prompts",
    "offline_model",
    "recorded_answer",
    "stands_in_for",
    "uninstall_offline_provider",
]
