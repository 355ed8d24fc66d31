"""The saga API: one saga with its steps and its history, for the client that started it.

Staff see every saga. Anyone else sees what the SAGAS["API_VISIBILITY"] hook allows (the
orders domain: the sagas of the orders the user placed); any other saga answers 404, as an
unknown one does. The payload (context,
step outputs, tracebacks) stays in the console.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from l2c.api import ErrorSerializer
from sagas.conf import saga_setting
from sagas.definitions import resolve_callable
from sagas.models import SagaEvent, SagaInstance, SagaStep


def _saga_with_history(*, saga_id: uuid.UUID) -> SagaInstance | None:
    return (
        SagaInstance.objects.prefetch_related(
            Prefetch("steps", queryset=SagaStep.objects.order_by("index")),
            Prefetch("events", queryset=SagaEvent.objects.order_by("id")),
        )
        .filter(pk=saga_id)
        .first()
    )


def _visible_to(request: Request, saga: SagaInstance) -> bool:
    """Staff see every saga; anyone else what the SAGAS["API_VISIBILITY"] hook allows. The
    engine knows nothing of orders, so the owning domain provides that rule."""
    if request.user.is_staff:
        return True
    hook = resolve_callable(saga_setting("API_VISIBILITY"))
    return bool(hook is not None and hook(user=request.user, saga=saga))


class StepErrorSerializer(serializers.Serializer):
    type = serializers.CharField()
    code = serializers.CharField()
    message = serializers.CharField()

    class Meta:
        ref_name = "SagaStepError"


class SagaDetailApi(APIView):
    class OutputSerializer(serializers.Serializer):
        class StepSerializer(serializers.Serializer):
            name = serializers.CharField()
            index = serializers.IntegerField()
            status = serializers.ChoiceField(choices=SagaStep.Status.choices)
            compensation_status = serializers.ChoiceField(choices=SagaStep.Compensation.choices)
            attempts = serializers.IntegerField()
            compensation_attempts = serializers.IntegerField()
            started_at = serializers.DateTimeField(allow_null=True)
            finished_at = serializers.DateTimeField(allow_null=True)
            duration_ms = serializers.IntegerField(allow_null=True)
            compensated_at = serializers.DateTimeField(allow_null=True)
            last_error = serializers.SerializerMethodField()

            class Meta:
                ref_name = "SagaStep"

            @extend_schema_field(StepErrorSerializer(allow_null=True))
            def get_last_error(self, step: SagaStep) -> dict[str, Any] | None:
                if not (step.error_type or step.error_code or step.error_message):
                    return None
                return {
                    "type": step.error_type,
                    "code": step.error_code,
                    "message": step.error_message,
                }

        class EventSerializer(serializers.Serializer):
            kind = serializers.ChoiceField(choices=SagaEvent.Kind.choices)
            step = serializers.CharField()
            attempt = serializers.IntegerField(allow_null=True)
            status = serializers.CharField()
            actor = serializers.CharField()
            reason = serializers.CharField()
            created_at = serializers.DateTimeField()

            class Meta:
                ref_name = "SagaEvent"

        id = serializers.UUIDField()
        definition = serializers.CharField()
        version = serializers.IntegerField()
        status = serializers.ChoiceField(choices=SagaInstance.Status.choices)
        business_key = serializers.CharField()
        correlation_id = serializers.CharField()
        current_step = serializers.CharField()
        error_code = serializers.CharField()
        error_message = serializers.CharField()
        deadline = serializers.DateTimeField()
        created_at = serializers.DateTimeField()
        updated_at = serializers.DateTimeField()
        completed_at = serializers.DateTimeField(allow_null=True)
        dead_lettered_at = serializers.DateTimeField(allow_null=True)
        dead_letter_reason = serializers.CharField()
        steps = StepSerializer(many=True)
        events = EventSerializer(many=True, help_text="The history, oldest first.")

        class Meta:
            ref_name = "Saga"

    @extend_schema(
        operation_id="saga_retrieve",
        tags=["sagas"],
        description="A saga with its steps and its history.",
        responses={
            200: OutputSerializer,
            401: OpenApiResponse(ErrorSerializer),
            403: OpenApiResponse(ErrorSerializer),
            404: OpenApiResponse(ErrorSerializer),
        },
    )
    def get(self, request: Request, saga_id: uuid.UUID) -> Response:
        saga = _saga_with_history(saga_id=saga_id)
        if saga is None or not _visible_to(request, saga):
            raise exceptions.NotFound("No such saga.")
        return Response(self.OutputSerializer(saga).data)
