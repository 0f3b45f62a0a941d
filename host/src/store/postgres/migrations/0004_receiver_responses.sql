-- What the receiver answered to each attempt (issue 25): the HTTP status of the last response
-- the plugin received through the host, and the first KiB of its body as text (marked when
-- cut). NULL for attempts nobody answered, abandoned ones, and those settled before this.
ALTER TABLE attempts
    ADD COLUMN response_status INTEGER CHECK (response_status BETWEEN 0 AND 65535),
    ADD COLUMN response_body TEXT;
