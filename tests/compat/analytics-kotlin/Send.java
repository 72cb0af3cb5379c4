// Segment's Kotlin library (com.segment.analytics.kotlin:core, the JVM core of analytics-kotlin) as an
// app uses it, through its Java API, pointed at Spoor: settings from Spoor's
// /v1/projects/{writeKey}/settings, events uploaded to the apiHost that document names (/b, gzipped).
// The library always speaks HTTPS; the test puts a TLS front with its own certificate before the collector.
//
// Environment: SPOOR_CDN_HOST (host:port/v1 of the settings), SPOOR_API_HOST (apiHost of the
// configuration and of its default settings, used until settings arrive), SPOOR_WRITE_KEY, SPOOR_USER. Prints "queued 4 events" and keeps running
// (the library uploads in the background) until the test ends it.
import com.segment.analytics.kotlin.core.Configuration;
import com.segment.analytics.kotlin.core.Settings;
import com.segment.analytics.kotlin.core.Telemetry;
import com.segment.analytics.kotlin.core.compat.ConfigurationBuilder;
import com.segment.analytics.kotlin.core.compat.JavaAnalytics;
import java.util.List;
import java.util.Map;
import kotlinx.serialization.json.Json;

public class Send {
    public static void main(String[] args) throws Exception {
        String user = System.getenv("SPOOR_USER");
        String writeKey = System.getenv("SPOOR_WRITE_KEY");
        String apiHost = System.getenv("SPOOR_API_HOST");
        // The library's own telemetry goes to Segment unless turned off (the settings say sampleRate 0
        // too, but only once they have arrived).
        Telemetry.INSTANCE.setEnable(false);
        Configuration configuration = new ConfigurationBuilder(writeKey)
                .setApplication(new Object())  // an app's context; the JVM core only checks it is set
                .setCdnHost(System.getenv("SPOOR_CDN_HOST"))
                .setApiHost(apiHost)
                .setFlushAt(4)
                .setFlushInterval(1)
                .build();
        // Until a settings fetch has succeeded once, the library uses these; without them, Segment's own
        // api.segment.io/v1 whatever apiHost says (System.defaultState).
        configuration.setDefaultSettings(Json.Default.decodeFromString(Settings.Companion.serializer(),
                "{\"integrations\": {\"Segment.io\": {\"apiKey\": \"" + writeKey + "\", \"apiHost\": \"" + apiHost + "\"}}}"));
        // What went wrong, when something does, for the test's failure message.
        configuration.setErrorHandler(error -> {
            System.out.println("library error: " + error + (error.getCause() == null ? "" : " <- " + error.getCause()));
            return kotlin.Unit.INSTANCE;
        });
        JavaAnalytics analytics = new JavaAnalytics(configuration);

        analytics.identify(user, Map.of("email", "kotlin@example.com"));
        analytics.screen("Home", Map.of("source", "kotlin"));
        analytics.track("Product Viewed", Map.of("product_id", "P7", "price", 7.5, "category", "Socks"));
        analytics.track("Order Completed", Map.of("order_id", "o-kt-" + user, "currency", "EUR",
                "products", List.of(Map.of("product_id", "P7", "price", 7.5, "quantity", 2))));
        analytics.flush();
        System.out.println("queued 4 events");
        System.out.flush();
        Thread.sleep(120_000);
    }
}
