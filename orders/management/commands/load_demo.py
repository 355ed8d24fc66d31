"""Load demo data: products with stock, customers with points, an admin and an API user.

Idempotent: every row is looked up by its natural key first, so a second run changes nothing.
"""

from __future__ import annotations

from decimal import Decimal

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from rest_framework.authtoken.models import Token

from inventory.services import product_create
from orders.services import customer_create
from points.services import points_account_open, points_award

PRODUCTS = [
    ("SKU-KEYBOARD", "Mechanical keyboard", "89.90", 50),
    ("SKU-MOUSE", "Wireless mouse", "24.50", 120),
    ("SKU-MONITOR", "27-inch monitor", "229.00", 20),
    ("SKU-HEADSET", "USB headset", "59.99", 40),
    ("SKU-CABLE", "USB-C cable", "9.90", 500),
    ("SKU-DOCK", "Laptop dock", "149.00", 3),
    ("SKU-LAST", "Limited edition mug", "15.00", 1),
]
CUSTOMERS = [
    ("Ada Lovelace", "ada@example.com", "5000.00", True, 2000),
    ("Grace Hopper", "grace@example.com", "1500.00", True, 500),
    ("Alan Turing", "alan@example.com", "300.00", True, 0),
    ("Inactive Ian", "ian@example.com", "1000.00", False, 100),
]
ADMIN_USERNAME = "admin"
ADMIN_PASSWORD = "admin-pass-123"
API_USERNAME = "api-client"
API_TOKEN = "demo0000000000000000000000000000000000tk"


class Command(BaseCommand):
    help = "Load demo products, customers with points, an admin user and an API token."

    @transaction.atomic
    def handle(self, *args, **options):
        for sku, name, price, on_hand in PRODUCTS:
            product_create(sku=sku, name=name, price=Decimal(price), on_hand=on_hand)
        for name, email, limit, active, points in CUSTOMERS:
            customer = customer_create(
                name=name, email=email, credit_limit=Decimal(limit), active=active
            )
            points_account_open(customer_id=customer.pk)
            if points:
                points_award(
                    key=f"demo:welcome:{customer.pk}",
                    customer_id=customer.pk,
                    amount=points,
                    reason="welcome bonus",
                )

        User = get_user_model()
        admin_user, created = User.objects.get_or_create(
            username=ADMIN_USERNAME,
            defaults={"email": "admin@example.com", "is_staff": True, "is_superuser": True},
        )
        if created:
            admin_user.set_password(ADMIN_PASSWORD)
            admin_user.save(update_fields=["password"])
        api_user, created = User.objects.get_or_create(
            username=API_USERNAME, defaults={"email": "api@example.com"}
        )
        if created:
            api_user.set_unusable_password()
            api_user.save(update_fields=["password"])
        Token.objects.get_or_create(user=api_user, defaults={"key": API_TOKEN})
        token = Token.objects.get(user=api_user).key

        self.stdout.write(
            self.style.SUCCESS("Demo data loaded.")
            + f"\n  Admin console: /admin/  user {ADMIN_USERNAME!r}  password {ADMIN_PASSWORD!r}"
            + f"\n  API token for {API_USERNAME!r}: {token}"
            + f"\n    curl -H 'Authorization: Token {token}' http://127.0.0.1:8000/api/products/"
        )
