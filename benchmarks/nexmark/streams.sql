-- The three Nexmark streams, generated in process. `sluice bench nexmark`
-- replaces {events}, {event_rate} and {parallelism}.
CREATE STREAM person (id BIGINT, name TEXT, email_address TEXT, credit_card TEXT, city TEXT,
                      state TEXT, date_time TIMESTAMP, extra TEXT,
                      WATERMARK FOR date_time AS date_time - INTERVAL '4 seconds')
  WITH (connector = 'nexmark', kind = 'person', events = {events}, event_rate = {event_rate},
        parallelism = {parallelism});
CREATE STREAM auction (id BIGINT, item_name TEXT, description TEXT, initial_bid BIGINT,
                       reserve BIGINT, date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT,
                       category BIGINT, extra TEXT,
                       WATERMARK FOR date_time AS date_time - INTERVAL '4 seconds')
  WITH (connector = 'nexmark', kind = 'auction', events = {events}, event_rate = {event_rate},
        parallelism = {parallelism});
CREATE STREAM bid (auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT,
                   date_time TIMESTAMP, extra TEXT,
                   WATERMARK FOR date_time AS date_time - INTERVAL '4 seconds')
  WITH (connector = 'nexmark', kind = 'bid', events = {events}, event_rate = {event_rate},
        parallelism = {parallelism});
