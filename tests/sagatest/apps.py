from django.apps import AppConfig


class SagaTestConfig(AppConfig):
    name = "tests.sagatest"
    label = "sagatest"
    verbose_name = "Saga test support"
