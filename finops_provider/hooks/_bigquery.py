"""The BigQuery client both BigQuery hooks use (billing export, JOBS view): bounded, counted, endpoint-aware."""

from __future__ import annotations

from typing import Any

from airflow.providers.google.cloud.hooks.bigquery import BigQueryHook


class BoundedBigQueryHook(BigQueryHook):
    """:class:`BigQueryHook` whose ``google.cloud.bigquery.Client`` bounds and counts every HTTP request.

    Subclasses set ``self.timeout`` (seconds per request) and ``self.requests_made`` (answers counted so far).
    The connection may carry an ``api_endpoint`` extra (another BigQuery endpoint, for example a Private Service
    Connect address; tests use it for a local server).
    """

    timeout: float
    requests_made: int

    def get_client_options(self, api_endpoint_override: str | None = None) -> Any:
        """The provider's client options, with the connection's ``api_endpoint`` extra when it has one."""
        endpoint = api_endpoint_override or self._get_field("api_endpoint", None)
        return super().get_client_options(api_endpoint_override=endpoint)

    def bounded_client(self) -> Any:
        """A new client with the provider's credentials; every HTTP answer (429 / 5xx too) counts as one request,
        and no request waits longer than ``self.timeout`` (the client sends most with ``timeout=None``, i.e.
        forever, and ``getQueryResults`` with at least 120 s)."""
        client = self.get_client(project_id=self.project_id, location=self.location)
        client._http.hooks["response"].append(self._count_response)
        send, limit = client._http.request, self.timeout

        def request(method: str, url: str, *args: Any, timeout: Any = None, **kwargs: Any) -> Any:
            if timeout is None or (isinstance(timeout, int | float) and timeout > limit):
                timeout = limit
            return send(method, url, *args, timeout=timeout, **kwargs)

        client._http.request = request
        return client

    def _count_response(self, response: Any, *args: Any, **kwargs: Any) -> Any:
        self.requests_made += 1
        return response
