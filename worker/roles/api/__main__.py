"""`python -m worker.roles.api [--check]`: (re)write, or only compare, the
API's stored OpenAPI document, schemas/openapi-api.json."""

import sys

from worker.roles.api.routes import main

sys.exit(main())
