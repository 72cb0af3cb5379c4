"""Settings for a test module that runs campaigns: topics of its own, a webhook secret, and webhooks to
127.0.0.1 allowed (the receiver runs in the test)."""


from spoor.settings import Settings
from spoor.topics import create_segment_topics
from tests.support.local_stack import run_id


def campaign_settings(test_settings: Settings, secret: str) -> Settings:
    run = run_id(8)
    settings = test_settings.model_copy(update={
        "campaign_webhook_secret": secret, "triggers_topic": f"spoor.test-{run}.triggers",
        "segments_topic": f"spoor.test-{run}.segments", "campaigns_dead_letter_topic": f"spoor.test-{run}.cdlq",
        "webhook_allow_private_addresses": True})
    create_segment_topics(settings)
    return settings
