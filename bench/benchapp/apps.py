from django.apps import AppConfig


class BenchAppConfig(AppConfig):
    name = "bench.benchapp"
    label = "benchapp"
    verbose_name = "Saga benchmark"
    default_auto_field = "django.db.models.BigAutoField"
