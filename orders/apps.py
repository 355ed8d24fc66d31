from typing import Any

from django.apps import AppConfig


def ensure_domain_schedules(sender: Any = None, **kwargs: Any) -> None:
    """The housekeeping schedules of the domains this app wires together."""
    from sagas.schedules import schedules_ensure

    schedules_ensure(
        [
            {
                "name": "inventory: release expired reservations",
                "func": "inventory.tasks.expire_reservations",
                "minutes": 1,
            },
            {
                "name": "orders: purge expired idempotency keys",
                "func": "orders.tasks.purge_idempotency_records",
                "minutes": 60,
            },
        ],
        using=kwargs.get("using", "default"),
    )


class OrdersConfig(AppConfig):
    name = "orders"
    verbose_name = "Orders"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from orders import notifications  # noqa: F401  (registers the outbox consumers)

        post_migrate.connect(ensure_domain_schedules, sender=self, dispatch_uid="orders-schedules")
