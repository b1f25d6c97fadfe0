//! Paged listings (`get_prefix`) against a real etcd: every key of the prefix and no other, in
//! key order, at one revision, whatever the page sizes; a page over the message limit is read
//! again in halves, and a single key over it is an error, not a loop. No root.

use flannel_control::etcd::{
    connect_with_retry, get_prefix, get_prefix_paged, list_prefix_pages, EtcdOptions, ListPaging,
};
use flannel_perf::testbed::etcd::Etcd;

/// A real etcd and a client of it (`None`: no etcd binary here, the test skips as
/// [`Etcd::start_or_skip`] says). The etcd lives as long as the first half.
async fn etcd_and_client() -> Option<(Etcd, etcd_client::Client)> {
    let etcd = Etcd::start_or_skip()?;
    let opts = EtcdOptions {
        endpoints: vec![etcd.endpoint()],
        ..Default::default()
    };
    let client = connect_with_retry(&opts).await.unwrap();
    Some((etcd, client))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_hold_every_key_once_at_one_revision_and_oversized_pages_are_halved() {
    let Some((_etcd, mut client)) = etcd_and_client().await else {
        return;
    };
    // 60 keys; 30..36 carry 3,000-byte values, so a page of several of them exceeds the limit.
    let mut want = Vec::new();
    for i in 0..60 {
        let key = format!("/t/subnets/k{i:03}");
        let value = if (30..36).contains(&i) {
            "v".repeat(3000)
        } else {
            format!("small-{i}")
        };
        client
            .put(key.as_str(), value.as_str(), None)
            .await
            .unwrap();
        want.push((key, value));
    }
    // Neighbours of the prefix stay out.
    for k in ["/t/subnets", "/t/subnett", "/t/subnets0"] {
        client.put(k, "x", None).await.unwrap();
    }
    let paging = ListPaging {
        first_page: 7,
        page_bytes: 400,
        message_limit: 8000,
        min_page: 1,
        max_page: 1000,
    };
    let (kvs, rev) = get_prefix_paged(&mut client, "/t/subnets/", paging)
        .await
        .unwrap();
    let got: Vec<(String, String)> = kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                String::from_utf8_lossy(kv.value()).into_owned(),
            )
        })
        .collect();
    assert_eq!(got, want);
    let now = client.get("/t/", None).await.unwrap();
    assert_eq!(rev, now.header().unwrap().revision());
    // The default paging reads the same.
    let (kvs, _) = get_prefix(&mut client, "/t/subnets/").await.unwrap();
    assert_eq!(kvs.len(), 60);

    // One value over the limit: no page can hold it.
    client
        .put("/t/subnets/k999", "v".repeat(9000).as_str(), None)
        .await
        .unwrap();
    let err = get_prefix_paged(&mut client, "/t/subnets/", paging)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("too large"),
        "unexpected error: {err}"
    );
}

/// The page-by-page form hands over the pages themselves, in key order, each at the listing's
/// revision with the listing's key count, while the next page is already being read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_handed_over_one_by_one_at_the_listing_revision() {
    let Some((_etcd, mut client)) = etcd_and_client().await else {
        return;
    };
    let keys: Vec<String> = (0..50).map(|i| format!("/t/subnets/k{i:03}")).collect();
    for k in &keys {
        client.put(k.as_str(), "v", None).await.unwrap();
    }
    let paging = ListPaging {
        first_page: 4,
        page_bytes: 300,
        message_limit: 1 << 20,
        min_page: 1,
        max_page: 1000,
    };
    let mut pages: Vec<(Vec<String>, i64, usize)> = Vec::new();
    let rev = list_prefix_pages(&mut client, "/t/subnets/", paging, |page| {
        let ks = page
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect();
        pages.push((ks, page.revision, page.count));
    })
    .await
    .unwrap();
    assert!(pages.len() > 3, "{} pages", pages.len());
    assert_eq!(pages[0].0.len(), 4, "the first page has first_page keys");
    assert!(pages.iter().all(|(_, r, c)| *r == rev && *c == 50));
    let got: Vec<String> = pages.into_iter().flat_map(|(ks, _, _)| ks).collect();
    assert_eq!(got, keys);
    let now = client.get("/t/", None).await.unwrap();
    assert_eq!(rev, now.header().unwrap().revision());
}
