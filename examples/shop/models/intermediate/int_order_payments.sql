{% set payment_methods = ['card', 'coupon', 'bank_transfer', 'paypal'] %}

with payments as (

    select * from {{ ref('stg_payments') }}
    where payment_type = 'order'
      and payment_status = 'succeeded'

),

refunds as (

    select
        order_id,
        sum(amount) as refunded_amount,
        max(refunded_at) as last_refunded_at

    from {{ ref('stg_refunds') }}
    group by order_id

),

order_payments as (

    select
        order_id,
        {% for method in payment_methods -%}
        coalesce(sum(case when payment_method = '{{ method }}' then amount end), 0)
            as {{ method }}_amount,
        {% endfor -%}
        sum(amount) as paid_amount,
        count(*) as payment_count,
        min(created_at) as paid_at,
        arg_max(payment_method, amount) filter (where payment_method != 'coupon')
            as primary_payment_method

    from payments
    group by order_id

),

final as (

    select
        order_payments.*,
        coalesce(refunds.refunded_amount, 0) as refunded_amount,
        refunds.last_refunded_at

    from order_payments
    left join refunds using (order_id)

)

select * from final
