import sys

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class SagasConfig(AppConfig):
    name = "sagas"
    verbose_name = "Sagas"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from sagas import checks  # noqa: F401  (registers the system checks)
        from sagas.conf import saga_setting
        from sagas.metrics import register_saga_metrics

        register_saga_metrics()
        from sagas.schedules import ensure_engine_schedules

        # Every app's sagas.py registers its definitions, as admin.py registers admins.
        autodiscover_modules("sagas")
        post_migrate.connect(ensure_engine_schedules, sender=self, dispatch_uid="sagas-schedules")
        if sys.argv[1:2] == ["qcluster"] and saga_setting("TIMER"):
            from sagas.timer import timer_start

            timer_start()
