"""Storage and table contracts (the bottom layer). Importing the package loads the S3 backend,
which `warehouse.store.Warehouse(s3://...)` finds as its subclass."""

from warehouse import s3 as _s3  # noqa: F401
