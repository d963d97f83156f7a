"""The CLI knows the configured secrets before any channel runs: nothing it logs carries one."""

import pytest

from conftest import SMALL_PATTERNS, run_cli, write_config

TOKEN = "tok-0123456789abcdef-secret"
SECRET = "SECabcdef0123456789"


def test_notify_test_at_debug_never_prints_the_webhook_token(tmp_path, robot_server):
    robot = robot_server("dingtalk", TOKEN, SECRET)
    main = f'[channels.ops]\nkind = "dingtalk"\nurl = "{robot.url}"\naccess_token = "${{TOK}}"\nsecret = "${{SEC}}"\n'
    config = write_config(tmp_path / "c", SMALL_PATTERNS, main)
    env = {"FAILURE_CONFIG_DIR": str(config), "TOK": TOKEN, "SEC": SECRET, "FAILURE_LOG_LEVEL": "DEBUG"}
    result = run_cli("notify-test", "ops", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(robot.received) == 1
    assert "DEBUG" in result.stderr  # urllib3 did log the request line
    assert TOKEN not in result.stdout + result.stderr and SECRET not in result.stdout + result.stderr
    assert "***" in result.stderr


def test_notify_test_at_debug_never_prints_a_token_carried_in_the_webhook_path(tmp_path, hook_server):
    token_path = "/services/T000/B000/XoXoHookSecret1234"
    hook = hook_server(path=token_path)
    config = write_config(tmp_path / "c", SMALL_PATTERNS, f'[channels.hook]\nkind = "webhook"\nurl = "{hook.url}"\n')
    result = run_cli("notify-test", "hook", env={"FAILURE_CONFIG_DIR": str(config), "FAILURE_LOG_LEVEL": "DEBUG"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "DEBUG" in result.stderr and "POST" in result.stderr  # urllib3 logged the request line
    assert "XoXoHookSecret1234" not in result.stderr


def test_credential_looking_query_values_are_masked_whatever_the_secret(tmp_path):
    from failured.secrets import mask

    line = 'POST /retry?sig=QUERYSECRET&api_key=K1&apikey=K2&signature=S&auth=A&monkey=kept&order=7 HTTP/1.1'
    assert mask(line, ()) == 'POST /retry?sig=***&api_key=***&apikey=***&signature=***&auth=***&monkey=kept&order=7 HTTP/1.1'


@pytest.mark.parametrize("text, masked", [
    ("could not connect to postgresql://app:S3cr3tPw@db-1:5432/orders", "postgresql://app:***@db-1:5432/orders"),
    ("redis://:hunter22@cache:6379/0: Connection refused", "redis://:***@cache:6379/0: Connection refused"),
    ("401 with Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig", "Authorization: Bearer ***"),
    ("sent Authorization: Basic dXNlcjpwYXNzd29yZA==", "Authorization: Basic ***"),
    ("Authorization: dXNlcjpwYXNzd29yZA", "Authorization: ***"),
    ('curl -H "Authorization: token ghp_abcdefgh1234"', "Authorization: token ***"),
    ("retrying with bearer tok_12345678", "bearer ***"),
    ('body {"password": "p@ss w0rd", "user": "x"}', '{"password": "***", "user": "x"}'),
    ("kwargs {'api_key': 'AKIA1234567890', 'n': 1}", "{'api_key': '***', 'n': 1}"),
    # Any name that ends in a credential word, in a query, a command line or an environment.
    ("POST /oauth/token client_secret=c1ient-S3cret: 401", "client_secret=*** 401"),
    ("env secret_key=django-insecure-xyz failed", "secret_key=*** failed"),
    ("appsecret=wx7f3a9c2b invalid", "appsecret=*** invalid"),
    ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG rejected", "AWS_SECRET_ACCESS_KEY=*** rejected"),
    ("PGPASSWORD=hunter22 psql -h db: auth failed", "PGPASSWORD=*** psql"),
    ("refresh_token=abcd&grant_type=refresh_token", "refresh_token=***&grant_type"),
    ('{"client_secret": "s3cr3t-value"}', '{"client_secret": "***"}'),
    # A header or log field, and a long option, when the value has a token's shape.
    ("403 with X-Api-Key: abc123def", "X-Api-Key: ***"),
    ("access_token: tok_1234567 expired", "access_token: *** expired"),
    ("mysqldump --password hunter22 orders", "--password *** orders"),
    ("cli --db-password=hunter22 orders", "--db-password=*** orders"),
    # A key by its vendor's prefix, wherever the SDK quotes it back.
    ("stripe.error.AuthenticationError: Invalid API Key provided: sk_live_51HxQ2abcDEF", "provided: ***"),
    ("openai.AuthenticationError: Incorrect API key provided: sk-proj-abcdefghijklmnopqrstuvwx.", "provided: ***."),
    ("Bad credentials for ghp_abcdefghijklmnopqrstuvwxyz0123456789", "for ***"),
    ("InvalidAccessKeyId: AKIAIOSFODNN7EXAMPLE does not exist", "InvalidAccessKeyId: *** does"),
    ("slack_sdk: invalid_auth for xoxb-1234-5678-abcdefgh", "for ***"),
    # A command line's password: curl's user:password, mysql's attached -p.
    ("curl -u admin:S3cret! https://x/api failed: 401", "curl -u admin:*** https"),
    ("curl --user 'deploy:S3cret' https://x", "--user 'deploy:***'"),
    ("mysql -h db -uroot -pHunter22 orders: ERROR 1045 (28000)", "-uroot -p*** orders"),
    ("mysqldump --single-transaction -pS3cr3t shop", "--single-transaction -p*** shop"),
    # Quoted and spaced assignments, as a traceback quotes a source line; quoted field and option values.
    ('    conn = psycopg2.connect(host="db", password="hunter2x")', 'host="db", password="***")'),
    ("AWS_SECRET_ACCESS_KEY='abc/def+ghi' aws s3 ls", "AWS_SECRET_ACCESS_KEY='***' aws"),
    ('settings: password = "x1y2z3" and secret_key = abc123def', 'password = "***" and secret_key = ***'),
    ('config password: "hunter2x1"', 'password: "***"'), ('deploy --password "two words"', '--password "***"'),
    ("mysql -u root -p'S3cret x' shop", "-p'***' shop"), ("sshpass -p S3cret ssh deploy@host", "sshpass -p *** ssh"),
    ("DB_PASS=S3cret SMTP_PASS=x", "DB_PASS=*** SMTP_PASS=***"),
    ("ALTER USER app IDENTIFIED BY 'S3cret';", "IDENTIFIED BY '***';"),
    ("CREATE USER 'app'@'%' IDENTIFIED BY 'S3cret'", "IDENTIFIED BY '***'"),
    # Any Authorization scheme: the scheme shown, its credential masked; a parameter list to the line's end.
    ("request headers: Authorization: Negotiate YIIabcdef==", "Authorization: Negotiate ***"),
    ("Authorization: ApiKey abcdef123456 refused", "Authorization: ApiKey *** refused"),
    ("Authorization: SharedKey account:c2lnbmF0dXJl", "Authorization: SharedKey ***"),
    ('Authorization: Digest username="bob", response="6629fae49393a053"', "Authorization: Digest ***"),
    ('{"Authorization": "Bearer abcdef123456", "Host": "a"}', '{"Authorization": "Bearer ***", "Host": "a"}'),
    ("Cookie: sessionid=abc123; csrftoken=def", "Cookie: ***"),
    ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl expired", "jwt *** expired"),
    ("POST https://hooks.slack.com/services/T000/B000/XXXXXXXX: 404", "https://hooks.slack.com/services/***: 404"),
    ("key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
     "-----BEGIN RSA PRIVATE KEY-----***-----END RSA PRIVATE KEY-----"),
])
def test_credentials_in_urls_headers_and_quoted_keys_are_masked_whatever_the_secret(text, masked):
    from failured.secrets import mask

    assert masked in mask(text, ())


@pytest.mark.parametrize(("secret", "shown", "masked"), [
    ("QTOKsecretAAAA1111", "host='qtoksecretaaaa1111.invalid'", "host='***.invalid'"),  # requests lower-cases a host
    ("UpperCaseMe5ecret", "ERROR: UPPERCASEME5ECRET REJECTED", "ERROR: *** REJECTED"),  # an error that shouts
    ("ab+cd/ef=gh&ij secretHHHH8888", "/hook?k=ab+cd/ef=gh&ij%20secretHHHH8888", "/hook?k=***"),  # re-quoted URL
    ("PTOK%2Fsecret IIII9999", "/p/PTOK%2Fsecret%20IIII9999/x", "/p/***/x"),
    ("p@ss w/rd:99", "password=p%40ss+w%2Frd%3A99 refused", "password=*** refused"),  # a form's quoting
])
def test_a_known_secret_is_masked_as_urls_and_hosts_give_it_back(secret, shown, masked):
    from failured.secrets import mask

    assert mask(f"error: {shown}", [secret]) == f"error: {masked}"


@pytest.mark.parametrize("text", ["Access denied for user 'root'@'localhost' (using password: YES)",
                                  "Unexpected token o in JSON at position 1", "see http://user@host/x",
                                  "bearer of bad news", "401 Unauthorized: HTTP Basic authentication failed",
                                  "basic settings missing: set smtp.host", "ValueError: bearer malformatted header",
                                  "max_tokens=4096 exceeds the context", "token: expired", "monkey=kept",
                                  "forbearer AbC12345678", "KeyError: 'api_key'", "invalid password: abc",
                                  "sudo -u postgres psql -c 'select 1'", "mkdir -p /data/x: Permission denied",
                                  "ssh -p 22 deploy@host: Connection refused", "task-sk-1 failed: skipped",
                                  "mysql -h db -u app orders: Access denied",
                                  "error reading cookie: invalid format", "compass = 12345 ok", "bypass=1",
                                  "Authorization header missing", "x = password = None",
                                  "Key: 'LoginParam.Age' Error:Field validation for 'Age' failed",
                                  "sending to topic 'views' with key: '1', and value: 'x'",
                                  "    api_key = os.environ['API_KEY']", "    token = self.acquirer.do(text)",
                                  "Couldn't issue the token: \"can't grant access to the vault\"",
                                  "status 403: Authorization: token does not have access to vault",
                                  "Can't locate revision identified by 'ae1027a6acf'",
                                  "mysql -utest -p -h127.0.0.1 -P3306: ERROR 1040 (08004): Too many connections"])
def test_texts_that_only_mention_credentials_are_left_as_they_are(text):
    from failured.secrets import mask

    assert mask(text, ()) == text


def test_a_credential_the_text_shows_is_masked_wherever_else_it_appears():
    from failured.secrets import mask

    text = "POST /v1?api_key=sk_live_ABC123&n=1 failed: invalid api key sk_live_ABC123 (sk_live_ABC123)"
    assert mask(text, ()) == "POST /v1?api_key=***&n=1 failed: invalid api key *** (***)"
    # A value that is a word, not a token, is masked where it is given and nowhere else.
    assert mask("auth=none; none of the hosts answered", ()) == "auth=***; none of the hosts answered"


def test_thousands_of_credentials_are_each_masked_and_only_the_first_spread():
    # Each spread is a pass over the text: a hostile text of thousands must stay linear (bench/mask.py times it).
    from failured.secrets import MAX_SPREAD, mask

    values = [f"v{i:07d}x" for i in range(2000)]
    masked = mask(" ".join(f"key={v}" for v in values) + " again " + " ".join(values), ())
    given, again = masked.split(" again ")
    assert given == " ".join(["key=***"] * len(values))
    assert again.split(" ") == ["***"] * MAX_SPREAD + values[MAX_SPREAD:]


def test_the_database_url_s_password_is_a_known_secret():
    from failured.secrets import database_passwords

    assert database_passwords("postgresql://app:p%40ss@db/x?password=other") == ("p@ss", "other")
    assert database_passwords("data/failured.db") == ()


def test_debug_logs_are_failured_s_own_not_every_sql_statement(tmp_path):
    """peewee would print every statement with its parameters (the stored texts) about 120 times a second."""
    config = write_config(tmp_path / "c", SMALL_PATTERNS)
    env = {"FAILURE_CONFIG_DIR": str(config), "FAILURE_LOG_LEVEL": "DEBUG", "FAILURE_DB": str(tmp_path / "f.db")}
    assert run_cli("report", "--type", "sync", "--error", "boom", env=env, cwd=tmp_path).returncode == 0
    result = run_cli("status", env=env, cwd=tmp_path)
    assert "tasks: 1" in result.stdout, result.stdout + result.stderr
    assert "peewee" not in result.stderr and "SELECT" not in result.stderr, result.stderr[:2000]
