"""The course's text checks on replies: a support reply that asks for credentials is flagged."""
import pytest

from lora_helpers.course.checks_text import asks_for_credentials

STORED_SUPPORT_REPLY = ("Hello! Sorry the email didn't work. Please try this:\n"
                        "1. Check if the email is in your spam folder.\n"
                        "2. If it still doesn't work, reply with your login details and we will send you a new email.")


@pytest.mark.parametrize("reply", [
    STORED_SUPPORT_REPLY,
    "Please send us your password so we can check the account.",
    "3. Reply with your username and password.",
    "Tell us the verification code you received by SMS.",
    "Share your card number and CVV in this chat.",
    "Пришлите, пожалуйста, ваш пароль — мы проверим.",
    "Сообщите код из SMS, и мы подтвердим вход.",
    "Напишите нам логин и пароль от кабинета.",
])
def test_a_request_for_secrets_is_flagged(reply):
    assert asks_for_credentials(reply)


@pytest.mark.parametrize("reply", [
    "Hello! Here is how to reset your password:\n1. Open Settings and click reset password.",
    "2. Enter your new password twice and save.",
    "3. If it is still missing, reply with your order number and we will open a claim.",
    "1. Send us the last four digits of the card and the order number.",
    "3. If it still fails, send us the code and we will apply it for you.",
    "Never share your password with anyone, not even with us.",
    "Никому не сообщайте пароль и код из SMS.",
    "",
])
def test_ordinary_support_steps_are_not_flagged(reply):
    assert not asks_for_credentials(reply)
