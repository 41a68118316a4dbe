"""WSGI entry point: `gunicorn wsgi:app`, `flask --app wsgi ...`."""
from coalition import create_app

app = create_app()
