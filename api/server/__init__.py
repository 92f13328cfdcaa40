"""The HTTP server: the Litestar application, its routes, authentication and error responses."""
