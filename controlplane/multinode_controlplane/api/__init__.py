"""HTTP routers: validate, call one service function, answer. No logic here."""
