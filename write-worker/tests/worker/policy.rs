//! The writes queue's delivery limit and dead-lettering come from a broker
//! policy, not from queue arguments: an operator changes them on the live
//! queue, with no redeploy and no PRECONDITION_FAILED for the workers. And
//! the read-only user KEDA measures the queue with.

use std::time::{Duration, Instant};

use harness::broker::{is_access_refused, queue_depth};
use harness::policy::escape;
use harness::{BrokerPolicies, BrokerRole, BrokerUser, TestBroker};
use lapin::BasicProperties;
use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::json;

#[tokio::test]
async fn a_policy_change_reaches_the_declared_queue_without_a_redeclare() {
    let broker = TestBroker::new();
    let topology = broker.topology();
    let conn = broker.connect().await;
    let channel = conn.create_channel().await.unwrap();
    topology.declare(&channel).await.expect("declare");
    let mut policies = BrokerPolicies::apply(&broker);
    topology
        .declare(&channel)
        .await
        .expect("a policy never makes the declare clash");

    // A queue the operator parks broker dead letters in from now on.
    let parked = format!("{}.writes.parked", broker.prefix);
    let mut quorum = FieldTable::default();
    quorum.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(parked.as_str().into(), durable, quorum)
        .await
        .unwrap();

    // The change, on the live queue, as `rabbitmqctl set_policy` (or
    // infra/rabbitmq/load after editing definitions.json) makes it.
    policies.set(
        "writes",
        &format!(r"^{}\.writes$", escape(broker.prefix.as_str())),
        &json!({
            "delivery-limit": 1,
            "dead-letter-exchange": "",
            "dead-letter-routing-key": parked,
            "dead-letter-strategy": "at-least-once",
            "overflow": "reject-publish",
        }),
        10,
    );

    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            topology.writes_exchange.as_str().into(),
            shared::topology::WRITE_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirm.is_ack());

    // Return it until the broker dead-letters it past the new limit.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue_depth(&broker, &parked).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the policy's delivery limit and dead-letter target never took effect"
        );
        let got = channel
            .basic_get(
                topology.writes_queue.as_str().into(),
                BasicGetOptions::default(),
            )
            .await
            .unwrap();
        match got {
            Some(message) => {
                let requeue = BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                };
                message.delivery.acker.nack(requeue).await.unwrap();
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(queue_depth(&broker, &parked).await, 1);
    assert_eq!(queue_depth(&broker, &topology.writes_queue).await, 0);
    assert_eq!(
        queue_depth(&broker, &topology.dead_queue).await,
        0,
        "the policy, not a declared argument, chose where dead letters go"
    );
    topology
        .declare(&channel)
        .await
        .expect("the workers' declare still succeeds after the change");

    channel
        .queue_delete(parked.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    conn.close(0, "done".into()).await.ok();
}

#[tokio::test]
async fn the_monitoring_user_reads_the_queue_length_and_nothing_else() {
    let broker = TestBroker::new();
    let topology = broker.topology();
    let admin = broker.connect().await;
    let channel = admin.create_channel().await.unwrap();
    topology.declare(&channel).await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
        .basic_publish(
            topology.writes_exchange.as_str().into(),
            shared::topology::WRITE_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    // What KEDA's rabbitmq scaler does in QueueLength mode over AMQP.
    let user = BrokerUser::create(&broker, BrokerRole::Monitoring);
    let conn = user.connect().await.expect("the monitoring user connects");
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let monitor = conn.create_channel().await.unwrap();
    let queue = monitor
        .queue_declare(
            topology.writes_queue.as_str().into(),
            passive,
            FieldTable::default(),
        )
        .await
        .expect("a passive declare needs no permission");
    assert_eq!(queue.message_count(), 1);

    // It can take nothing, and change nothing.
    let take = conn.create_channel().await.unwrap();
    let err = take
        .basic_get(
            topology.writes_queue.as_str().into(),
            BasicGetOptions::default(),
        )
        .await
        .expect_err("no read permission");
    assert!(is_access_refused(&err), "{err}");
    let delete = conn.create_channel().await.unwrap();
    let err = delete
        .queue_delete(
            topology.writes_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .expect_err("no configure permission");
    assert!(is_access_refused(&err), "{err}");
    assert_eq!(queue_depth(&broker, &topology.writes_queue).await, 1);
    conn.close(0, "done".into()).await.ok();
    admin.close(0, "done".into()).await.ok();
}
