"""The customers app's side of catalog.subscribers: a plan's subscribers, for the catalog's plan
versions (impact preview, `migrate`, the in-place editor's warning)."""

from . import selectors, services


class PlanSubscribers:
    def over_limit(self, *, version_ids, feature_id, limit) -> frozenset[int]:
        return selectors.subscribers_over_limit(
            version_ids=version_ids, feature_id=feature_id, limit=limit
        )

    def migrate(self, *, version) -> int:
        return services.subscriptions_version_migrate(version=version)
